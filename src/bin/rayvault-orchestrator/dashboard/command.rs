//! `rayvault-orchestrator dashboard`: asks the running daemon for a
//! one-time login link (a signed request), prints it, and opens it in the
//! browser when this machine has one.

use crate::daemon_client::DaemonClient;
use actix::prelude::*;
use anyhow::{anyhow, bail};
use rayvault::auth::Keyring;
use rayvault::config::Settings;
use std::sync::Arc;

/// `dashboard`: how to open the dashboard.
#[derive(Debug, Clone, clap::Args)]
pub struct DashboardArgs {
    /// Only print the login link; do not open a browser.
    #[arg(long)]
    pub no_open: bool,
}

/// `dashboard`: asks the running daemon for a one-time login link, prints
/// it, and opens it in the browser when this machine has one.
pub fn command(settings: Arc<Settings>, keyring: Option<Arc<Keyring>>, args: DashboardArgs) -> anyhow::Result<u8> {
    let Some(keyring) = keyring else {
        bail!("the dashboard is served by the daemon, and logging in asks the daemon with the cluster secret: set RAYVAULT_CLUSTER_SECRET as for the daemon")
    };
    System::new().block_on(async move {
        let Some(client) = DaemonClient::connect(&settings, keyring).await? else {
            bail!(
                "no daemon answers at {}:{}: the dashboard is part of the daemon; start it with `rayvault-orchestrator daemon` (or its service)",
                settings.controller.api_host,
                settings.controller.api_port
            )
        };
        let answer = client.dashboard_login().await?;
        let token = answer["token"].as_str().filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())).ok_or_else(|| anyhow!("unexpected login answer from the daemon"))?;
        let url = format!("{}/login?t={token}", client.base());
        println!("{url}");
        eprintln!("This link logs one browser in to the dashboard; it works once, within {} seconds.", answer["expires_in_s"].as_u64().unwrap_or(60));
        if !args.no_open && open_browser(&url).await {
            eprintln!("Opened it in your browser.");
        }
        Ok(0)
    })
}

/// Opens `url` with `open` (macOS) or `xdg-open` (Linux, in a graphical
/// session); false when there is no browser to open it with. Started
/// through `process::run_detached`: the browser outlives this command, and
/// gets no cluster secret in its environment.
async fn open_browser(url: &str) -> bool {
    let program = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(target_os = "linux") && (std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()) {
        "xdg-open"
    } else {
        return false;
    };
    let tool = rayvault::process::Tool::new(program, program).arg(url).timeout(std::time::Duration::from_secs(10));
    match rayvault::process::run_detached(&tool).await {
        Ok(Some(status)) => status.success(),
        // Still running after a while: it is the browser itself.
        Ok(None) => true,
        Err(_) => false,
    }
}
