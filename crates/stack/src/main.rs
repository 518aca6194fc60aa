//! `zentra-stack`: the whole platform on one machine (`just up`).

use zentra_runtime::bin_support;
use zentra_stack::settings::Settings;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("mail-sink") {
        std::process::exit(mail_sink(args.skip(1).collect()).await);
    }
    let settings = match Settings::from_env(args) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(bin_support::EXIT_CONFIG);
        }
    };
    if let Err(error) = zentra_stack::run(settings, bin_support::shutdown_signal()).await {
        eprintln!("zentra-stack: {error:#}");
        std::process::exit(1);
    }
}

/// `zentra-stack mail-sink HOST:PORT [--log]`: the stack's SMTP sink, run by the stack itself.
async fn mail_sink(args: Vec<String>) -> i32 {
    let (listen, log) = match args.as_slice() {
        [listen] => (listen, false),
        [listen, flag] if flag == "--log" => (listen, true),
        _ => {
            eprintln!("usage: zentra-stack mail-sink HOST:PORT [--log]");
            return bin_support::EXIT_CONFIG;
        }
    };
    let Ok(listen) = listen.parse() else {
        eprintln!("mail-sink: {listen} is not a HOST:PORT address");
        return bin_support::EXIT_CONFIG;
    };
    match zentra_stack::mail::serve(listen, log, bin_support::shutdown_signal()).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("mail-sink: {error:#}");
            1
        }
    }
}
