//! Zentra's control center, compiled to wasm and served by the gateway.

mod api;
mod app;
mod chart;
mod format;
mod overview;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}
