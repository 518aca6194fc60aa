//! Pieces every page uses: a flag that ends a page's polling loop when the page goes, the result
//! of an action in words, and a list that may still be loading, failed or be empty.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use leptos::prelude::*;

/// True while the current page is shown; loops poll it and stop once it is false.
pub fn page_alive() -> Arc<AtomicBool> {
    let alive = Arc::new(AtomicBool::new(true));
    let flag = alive.clone();
    on_cleanup(move || flag.store(false, Ordering::Relaxed));
    alive
}

/// Whether the page is still shown.
pub fn shown(alive: &AtomicBool) -> bool {
    alive.load(Ordering::Relaxed)
}

/// Waits `ticks` quarter seconds, or less once `refresh` changes (a new filter, an action) or the
/// page is gone with its signal.
pub async fn wait_or_refresh(refresh: RwSignal<u32>, ticks: u32) {
    let seen = refresh.get_untracked();
    for _ in 0..ticks {
        gloo_timers::future::TimeoutFuture::new(250).await;
        if refresh.try_get_untracked() != Some(seen) {
            return;
        }
    }
}

/// The last action's result: a status line or an alert.
pub fn outcome_view(outcome: RwSignal<Option<Result<String, String>>>) -> impl IntoView {
    move || {
        outcome.get().map(|outcome| match outcome {
            Ok(message) => view! { <p class="ok" role="status">{message}</p> }.into_any(),
            Err(error) => view! { <p class="error" role="alert">{error}</p> }.into_any(),
        })
    }
}

/// A fetched list: loading, its error in words, `empty` when it has nothing, else `render`.
pub fn listing<T>(
    state: Option<Result<Vec<T>, String>>,
    empty: &'static str,
    render: impl FnOnce(Vec<T>) -> AnyView,
) -> AnyView {
    match state {
        None => view! { <p class="hint">"loading…"</p> }.into_any(),
        Some(Err(error)) => view! { <p class="error">{error}</p> }.into_any(),
        Some(Ok(list)) if list.is_empty() => view! { <p class="hint empty">{empty}</p> }.into_any(),
        Some(Ok(list)) => render(list),
    }
}
