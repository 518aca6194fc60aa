// Debian's Chromium, headless, driven by playwright-core (no browser is ever downloaded).
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const url = process.env.ZENTRA_E2E_URL ?? 'http://127.0.0.1:8080';
export const keys = {
  viewer: process.env.ZENTRA_VIEWER_KEY,
  operator: process.env.ZENTRA_OPERATOR_KEY,
  admin: process.env.ZENTRA_ADMIN_KEY,
};
export const screenshots = process.env.ZENTRA_E2E_SCREENSHOTS;

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    // playwright gives every launch a fresh, temporary profile.
  });
}

// A page signed in with `key`, at 1280×800 unless told otherwise.
export async function signedIn(browser, key, viewport = { width: 1280, height: 800 }) {
  const page = await browser.newPage({ viewport });
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  // A panic in the app is reported on the console before the wasm trap: keep its words.
  page.on('console', (message) => {
    if (message.type() === 'error' && message.text().includes('panicked')) errors.push(message.text());
  });
  // Confirmations of operator actions are accepted, as a person would.
  page.on('dialog', (dialog) => dialog.accept());
  await page.goto(url);
  await page.fill('input[name="api-key"]', key);
  await page.click('button[type="submit"]');
  await page.waitForSelector('.overview');
  page.errors = errors;
  return page;
}

export async function shoot(page, name) {
  if (screenshots) {
    await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
  }
}

// Goes to a page of the app by its fragment and waits for its section.
export async function visit(page, path, selector) {
  await page.evaluate((hash) => { window.location.hash = hash; }, `/${path}`);
  await page.waitForSelector(selector);
}

// Waits until `selector`'s text satisfies `predicate` (a function of the text, run in the page).
export async function waitForText(page, selector, predicate, timeout = 30_000) {
  await page.waitForFunction(
    ([selector, source]) => {
      const element = document.querySelector(selector);
      // eslint-disable-next-line no-new-func
      return element !== null && new Function('text', `return (${source})(text)`)(element.textContent);
    },
    [selector, predicate.toString()],
    { timeout },
  );
}
