//! Zentra's control center, compiled to wasm and served by the gateway.

mod api;
mod app;
mod audit;
mod chaos;
mod chart;
mod dead_letters;
mod format;
mod infrastructure;
mod overview;
mod sagas;
mod services;
mod session;
mod simulator;
mod widgets;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}
