//! `cargo xtask fault`: shows and switches the fault flags of a running shop (docs/faults.md)
//! through each API's `/admin/faults`, as an operator. It finds the shop where `cargo xtask
//! up` runs it (APIs on --base-port + 1..5) and the operator's token in the
//! `target/conveyor-up/tokens.env` that `up` writes (or --token / OPERATOR_TOKEN).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use conveyor_contracts::service;
use serde_json::{Map, Value};

use crate::proc::Signals;
use crate::workspace_root;

/// The services that have fault flags.
const WITH_FLAGS: [&str; 3] = [service::PAYMENT, service::STOCK, service::NOTIFICATION];

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  cargo xtask fault                                  every flag and its value
  cargo xtask fault set payment.decline_rate=0.3 stock.slowdown_ms=500
  cargo xtask fault set notification.receiver_down=1
  cargo xtask fault clear payment                    payment's flags back to 0 (all services without a name)

Flags: payment.decline_rate (0..1), payment.error_rate (0..1), payment.latency_ms (0..60000),
stock.slowdown_ms (0..60000), notification.receiver_down (0 or 1). See docs/faults.md.")]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// Where the running shop's APIs answer: BASE+1..BASE+5, as `cargo xtask up --base-port` runs them.
    #[arg(long, default_value_t = 8080, global = true)]
    base_port: u16,
    /// An operator's bearer token. Default: OPERATOR_TOKEN from target/conveyor-up/tokens.env,
    /// which `cargo xtask up` writes.
    #[arg(long, env = "OPERATOR_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// List every service's flags and their values (the default).
    List,
    /// Set flags, each as SERVICE.FLAG=VALUE; the others keep their values.
    Set {
        #[arg(required = true, value_name = "SERVICE.FLAG=VALUE", value_parser = parse_assignment)]
        flags: Vec<Assignment>,
    },
    /// Switch every flag back to 0: of SERVICE, or of every service.
    Clear {
        /// payment, stock or notification.
        #[arg(value_parser = parse_service)]
        service: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Assignment {
    service: String,
    flag: String,
    value: f64,
}

fn parse_service(s: &str) -> Result<String, String> {
    match WITH_FLAGS.contains(&s) {
        true => Ok(s.to_owned()),
        false => Err(format!("{s:?} has no fault flags; the services that do: {}", WITH_FLAGS.join(", "))),
    }
}

/// `payment.decline_rate=0.3` → (payment, decline_rate, 0.3). The range of each flag is the
/// service's to check: its answer names the flag.
fn parse_assignment(s: &str) -> Result<Assignment, String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("{s:?}: write SERVICE.FLAG=VALUE, e.g. payment.decline_rate=0.3"))?;
    let (service, flag) = name.trim().split_once('.').ok_or_else(|| format!("{s:?}: name the flag as SERVICE.FLAG, e.g. payment.decline_rate"))?;
    let service = parse_service(service)?;
    if flag.is_empty() {
        return Err(format!("{s:?}: no flag name after {service:?}"));
    }
    let value: f64 = value.trim().parse().ok().filter(|v: &f64| v.is_finite()).ok_or_else(|| format!("{s:?}: {value:?} is not a number"))?;
    Ok(Assignment { service, flag: flag.to_owned(), value })
}

/// Returns the exit code.
pub async fn run(args: Args, _signals: &mut Signals) -> Result<i32> {
    let token = match args.token.clone() {
        Some(t) => t,
        None => token_from(&workspace_root().join("target").join("conveyor-up").join("tokens.env"))?,
    };
    let client = Client { http: reqwest::Client::new(), base_port: args.base_port, token };
    match args.action.unwrap_or(Action::List) {
        Action::List => {
            for svc in WITH_FLAGS {
                print(svc, &client.call(reqwest::Method::GET, svc, None).await?);
            }
        }
        Action::Set { flags } => {
            let mut by_service: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
            for a in flags {
                by_service.entry(a.service).or_default().insert(a.flag, Value::from(a.value));
            }
            for (svc, flags) in by_service {
                print(&svc, &client.call(reqwest::Method::PATCH, &svc, Some(Value::Object(flags))).await?);
            }
        }
        Action::Clear { service } => {
            let services: Vec<&str> = match &service {
                Some(s) => vec![s.as_str()],
                None => WITH_FLAGS.to_vec(),
            };
            for svc in services {
                print(svc, &client.call(reqwest::Method::DELETE, svc, None).await?);
            }
        }
    }
    Ok(0)
}

/// `export OPERATOR_TOKEN=…` from a tokens.env.
fn token_from(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("no operator token: {} is missing (start the shop with `cargo xtask up`, or pass --token / OPERATOR_TOKEN)", path.display())
    })?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export ").unwrap_or(l.trim()).strip_prefix("OPERATOR_TOKEN="))
        .map(|t| t.trim().trim_matches('"').to_owned())
        .find(|t| !t.is_empty())
        .with_context(|| format!("{} holds no OPERATOR_TOKEN", path.display()))
}

struct Client {
    http: reqwest::Client,
    base_port: u16,
    token: String,
}

impl Client {
    /// `/admin/faults` of `svc`'s API: every flag and its value, or an error saying why not.
    async fn call(&self, method: reqwest::Method, svc: &str, body: Option<Value>) -> Result<Map<String, Value>> {
        anyhow::ensure!(service::ALL.contains(&svc), "unknown service {svc}");
        let port = conveyor_launcher::api_port(self.base_port, svc).context("--base-port too high")?;
        let url = format!("http://127.0.0.1:{port}/admin/faults");
        let mut req = self.http.request(method.clone(), &url).bearer_auth(&self.token).timeout(Duration::from_secs(10));
        if let Some(body) = &body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| match e.is_connect() {
            true => anyhow::anyhow!(
                "no {svc} API answers on 127.0.0.1:{port}: is the shop running (`cargo xtask up`), and on this --base-port ({})?",
                self.base_port
            ),
            false => anyhow::anyhow!("{method} {url}: {e}"),
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let detail = answer["detail"].as_str().map(str::to_owned).unwrap_or_else(|| answer.to_string());
            let hint = match status.as_u16() {
                401 | 403 => " (is it an operator's token of this shop? each `cargo xtask up` signs with a new key and rewrites tokens.env)",
                _ => "",
            };
            bail!("{method} {url}: {status}: {detail}{hint}");
        }
        match answer {
            Value::Object(flags) => Ok(flags),
            other => bail!("{method} {url}: expected an object of flags, got {other}"),
        }
    }
}

fn print(svc: &str, flags: &Map<String, Value>) {
    for (i, (name, value)) in flags.iter().enumerate() {
        let value = value.as_f64().map(|v| v.to_string()).unwrap_or_else(|| value.to_string());
        let state = if value == "0" { "" } else { "  ← on" };
        println!("{:<13} {name:<14} {value}{state}", if i == 0 { svc } else { "" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_name_a_service_a_flag_and_a_number() {
        let a = parse_assignment("payment.decline_rate=0.3").unwrap();
        assert_eq!(a, Assignment { service: "payment".into(), flag: "decline_rate".into(), value: 0.3 });
        assert_eq!(parse_assignment("stock.slowdown_ms = 500").unwrap().value, 500.0);
        assert!(parse_assignment("payment.decline_rate").unwrap_err().contains("SERVICE.FLAG=VALUE"));
        assert!(parse_assignment("decline_rate=1").unwrap_err().contains("SERVICE.FLAG"));
        assert!(parse_assignment("order.x=1").unwrap_err().contains("has no fault flags"));
        assert!(parse_assignment("payment.=1").unwrap_err().contains("no flag name"));
        assert!(parse_assignment("payment.decline_rate=lots").unwrap_err().contains("not a number"));
        assert!(parse_assignment("payment.decline_rate=NaN").unwrap_err().contains("not a number"));
    }

    #[test]
    fn the_token_comes_from_tokens_env() {
        let dir = std::env::temp_dir().join(format!("xtask-fault-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.env");
        std::fs::write(&path, "export ALICE_TOKEN=a\nexport OPERATOR_TOKEN=op.er.ator\n").unwrap();
        assert_eq!(token_from(&path).unwrap(), "op.er.ator");
        std::fs::write(&path, "export ALICE_TOKEN=a\n").unwrap();
        assert!(token_from(&path).unwrap_err().to_string().contains("no OPERATOR_TOKEN"));
        assert!(token_from(&dir.join("missing")).unwrap_err().to_string().contains("cargo xtask up"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
