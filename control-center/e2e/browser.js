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
