//! The shell: sign-in with an API key (kept for this tab only), then the pages.

use leptos::{prelude::*, task::spawn_local};
use zentra_proto::ops::v1 as ops;

use crate::{
    api::{Api, describe},
    overview::Overview,
};

const KEY_ITEM: &str = "zentra-api-key";

fn session() -> Option<web_sys::Storage> {
    web_sys::window().and_then(|window| window.session_storage().ok().flatten())
}

/// The app.
#[component]
pub fn App() -> impl IntoView {
    let key =
        RwSignal::new(session().and_then(|storage| storage.get_item(KEY_ITEM).ok().flatten()));
    let sign_out = move |_| {
        if let Some(storage) = session() {
            let _ = storage.remove_item(KEY_ITEM);
        }
        key.set(None);
    };
    view! {
        <header class="top">
            <h1>"Zentra"<span>" control center"</span></h1>
            <nav>
                <a href="#overview" class="active">"Overview"</a>
            </nav>
            <Show when=move || key.get().is_some()>
                <button class="quiet" on:click=sign_out>"Sign out"</button>
            </Show>
        </header>
        <main>
            {move || match key.get() {
                None => view! { <SignIn key /> }.into_any(),
                Some(current) => view! { <Overview api=Api::new(current) /> }.into_any(),
            }}
        </main>
    }
}

/// Asks for a key and checks it against the gateway before keeping it.
#[component]
fn SignIn(key: RwSignal<Option<String>>) -> impl IntoView {
    let typed = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let checking = RwSignal::new(false);
    let submit = move |event: leptos::ev::SubmitEvent| {
        event.prevent_default();
        let candidate = typed.get().trim().to_owned();
        if candidate.is_empty() {
            error.set(Some("enter an API key".to_owned()));
            return;
        }
        checking.set(true);
        spawn_local(async move {
            let api = Api::new(candidate.clone());
            let checked = api
                .ops()
                .get_build_info(api.request(ops::GetBuildInfoRequest {}, "gateway"))
                .await;
            checking.set(false);
            match checked {
                Ok(_) => {
                    if let Some(storage) = session() {
                        let _ = storage.set_item(KEY_ITEM, &candidate);
                    }
                    error.set(None);
                    key.set(Some(candidate));
                }
                Err(status) => error.set(Some(describe(&status))),
            }
        });
    };
    view! {
        <form class="signin" on:submit=submit>
            <h2>"Sign in"</h2>
            <p class="hint">"Use an API key: `just up` prints development keys for the viewer, operator and admin roles."</p>
            <input
                type="password"
                name="api-key"
                placeholder="zk_…"
                autocomplete="off"
                prop:value=move || typed.get()
                on:input=move |event| typed.set(event_target_value(&event))
            />
            <button type="submit" disabled=move || checking.get()>"Sign in"</button>
            <Show when=move || error.get().is_some()>
                <p class="error" role="alert">{move || error.get().unwrap_or_default()}</p>
            </Show>
        </form>
    }
}
