//! The shell: sign-in, navigation by the URL's fragment (`#/sagas/<id>` links work), and the pages.

use leptos::{prelude::*, task::spawn_local};

use crate::{
    audit::Audit,
    chaos::Chaos,
    dead_letters::DeadLetters,
    infrastructure::Infrastructure,
    overview::Overview,
    sagas::{SagaDetail, Sagas},
    services::Services,
    session::{Session, store_key, stored_key},
    simulator::Simulator,
};

/// A page and its address.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Every service's health and numbers.
    Overview,
    /// Saga search.
    Sagas,
    /// One saga's timeline.
    Saga(String),
    /// Scenarios and load.
    Simulator,
    /// Dead letters.
    DeadLetters,
    /// Faults and breakers.
    Chaos,
    /// Log levels, config, build.
    Services,
    /// Broker, databases, Redis.
    Infrastructure,
    /// Who did what.
    Audit,
}

const NAV: [(&str, &str); 8] = [
    ("overview", "Overview"),
    ("sagas", "Sagas"),
    ("simulator", "Simulator"),
    ("dlq", "DLQ"),
    ("chaos", "Chaos"),
    ("services", "Services"),
    ("infrastructure", "Infrastructure"),
    ("audit", "Audit"),
];

impl Route {
    fn parse(hash: &str) -> Self {
        let path = hash.trim_start_matches('#').trim_start_matches('/');
        match path.split_once('/') {
            Some(("sagas", id)) if !id.is_empty() => Route::Saga(id.to_owned()),
            _ => match path {
                "sagas" => Route::Sagas,
                "simulator" => Route::Simulator,
                "dlq" => Route::DeadLetters,
                "chaos" => Route::Chaos,
                "services" => Route::Services,
                "infrastructure" => Route::Infrastructure,
                "audit" => Route::Audit,
                _ => Route::Overview,
            },
        }
    }

    fn section(&self) -> &'static str {
        match self {
            Route::Overview => "overview",
            Route::Sagas | Route::Saga(_) => "sagas",
            Route::Simulator => "simulator",
            Route::DeadLetters => "dlq",
            Route::Chaos => "chaos",
            Route::Services => "services",
            Route::Infrastructure => "infrastructure",
            Route::Audit => "audit",
        }
    }
}

fn current_route() -> Route {
    let hash = web_sys::window()
        .and_then(|window| window.location().hash().ok())
        .unwrap_or_default();
    Route::parse(&hash)
}

/// Goes to `#/<path>`.
pub fn navigate(path: &str) {
    if let Some(window) = web_sys::window() {
        let _ = window.location().set_hash(&format!("/{path}"));
    }
}

/// The app.
#[component]
pub fn App() -> impl IntoView {
    let session = RwSignal::new(None::<Session>);
    provide_context(session);
    let route = RwSignal::new(current_route());
    let _listener = window_event_listener(leptos::ev::hashchange, move |_| {
        route.set(current_route());
    });
    // A key kept from earlier in this tab signs in again without asking.
    let restoring = RwSignal::new(false);
    if let Some(key) = stored_key() {
        restoring.set(true);
        spawn_local(async move {
            match Session::open(&key).await {
                Ok(opened) => session.set(Some(opened)),
                Err(_) => store_key(None),
            }
            restoring.set(false);
        });
    }
    let sign_out = move |_| {
        store_key(None);
        session.set(None);
    };
    view! {
        <header class="top">
            <h1>"Zentra"<span>" control center"</span></h1>
            <Show when=move || session.with(Option::is_some)>
                <nav>
                    {NAV
                        .iter()
                        .map(|(path, label)| {
                            let path = *path;
                            view! {
                                <a
                                    href=format!("#/{path}")
                                    class=move || if route.get().section() == path { "active" } else { "" }
                                >
                                    {*label}
                                </a>
                            }
                        })
                        .collect_view()}
                </nav>
                <span class="who">
                    {move || session.get().map(|s| format!("{} · {}", s.caller, s.role.name())).unwrap_or_default()}
                </span>
                <button class="quiet" on:click=sign_out>"Sign out"</button>
            </Show>
        </header>
        <main>
            {move || {
                if session.with(Option::is_none) {
                    return if restoring.get() {
                        view! { <p class="hint">"signing in…"</p> }.into_any()
                    } else {
                        view! { <SignIn session /> }.into_any()
                    };
                }
                match route.get() {
                    Route::Overview => view! { <Overview /> }.into_any(),
                    Route::Sagas => view! { <Sagas /> }.into_any(),
                    Route::Saga(id) => view! { <SagaDetail saga_id=id /> }.into_any(),
                    Route::Simulator => view! { <Simulator /> }.into_any(),
                    Route::DeadLetters => view! { <DeadLetters /> }.into_any(),
                    Route::Chaos => view! { <Chaos /> }.into_any(),
                    Route::Services => view! { <Services /> }.into_any(),
                    Route::Infrastructure => view! { <Infrastructure /> }.into_any(),
                    Route::Audit => view! { <Audit /> }.into_any(),
                }
            }}
        </main>
    }
}

/// Asks for a key and checks it with the gateway before keeping it.
#[component]
fn SignIn(session: RwSignal<Option<Session>>) -> impl IntoView {
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
            let opened = Session::open(&candidate).await;
            checking.set(false);
            match opened {
                Ok(opened) => {
                    store_key(Some(&candidate));
                    error.set(None);
                    session.set(Some(opened));
                }
                Err(message) => error.set(Some(message)),
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
            <Show when=move || error.with(Option::is_some)>
                <p class="error" role="alert">{move || error.get().unwrap_or_default()}</p>
            </Show>
        </form>
    }
}
