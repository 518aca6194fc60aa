//! `zentra-bench` (`just bench`): measures a running stack.

use zentra_bench::settings::Settings;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = match Settings::parse(args.clone()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    let command = format!("zentra-bench {}", args.join(" "));
    if let Err(error) = zentra_bench::run(settings, command).await {
        eprintln!("zentra-bench: {error:#}");
        std::process::exit(1);
    }
}
