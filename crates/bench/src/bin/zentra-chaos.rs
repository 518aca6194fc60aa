//! `zentra-chaos` (`just chaos`): kills and freezes a running stack's processes under load, then
//! audits its databases; exits non-zero on any violation.

use zentra_bench::chaos::{self, ChaosSettings};

#[tokio::main]
async fn main() {
    let settings = match ChaosSettings::parse(std::env::args().skip(1).collect()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    match chaos::run(settings).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("zentra-chaos: {error:#}");
            std::process::exit(1);
        }
    }
}
