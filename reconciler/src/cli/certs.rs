//! `cis490-reconciler certs`: a lab CA and its certificates, for a fleet without a PKI (the
//! generation itself is in [`crate::certs`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cis490_api::WorkerName;

use crate::certs::{self, InitReport, IssuedAgent};

/// Arguments of `certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Make a lab CA (ca.pem, ca-key.pem) and a server certificate (server.pem,
    /// server-key.pem) in DIR. A CA already in DIR is kept, so this also renews the server
    /// certificate or changes its names (with --force) without invalidating agent certificates.
    #[command(
        after_help = "Examples:\n  cis490-reconciler certs init --dir /etc/cis490/tls\n  cis490-reconciler certs init --dir /etc/cis490/tls --san pi.lab --san 192.168.1.20 --san localhost"
    )]
    Init {
        /// Where the files go (created owner-only when missing)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A host name or IP address clients use to reach the server (repeatable); replaces
        /// the default list [default: localhost, 127.0.0.1, ::1 and this host's name]
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        sans: Vec<String>,
        /// Replace the server certificate (and the CA, when one of its two files is missing)
        #[arg(long)]
        force: bool,
    },
    /// Make a client certificate for agent NAME (NAME.pem, NAME-key.pem), signed by the CA in
    /// DIR; the server then knows the agent as worker NAME.
    #[command(
        name = "issue-agent",
        after_help = "Example:\n  cis490-reconciler certs issue-agent gpu-box --dir /etc/cis490/tls"
    )]
    IssueAgent {
        /// The worker name (the agent's --name)
        #[arg(value_name = "NAME")]
        name: String,
        /// The folder holding ca.pem and ca-key.pem (from `certs init`)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace NAME.pem and NAME-key.pem if they exist (renewal)
        #[arg(long)]
        force: bool,
    },
}

/// Returns the process exit code.
pub fn run(args: CertsArgs) -> anyhow::Result<i32> {
    let text = match args.command {
        CertsCommand::Init { dir, sans, force } => {
            let report = certs::init(&dir, &sans, force)?;
            init_text(&dir, &report)
        }
        CertsCommand::IssueAgent { name, dir, force } => {
            let name = WorkerName::parse(&name).context("NAME must be a valid worker name")?;
            let issued = certs::issue_agent(&dir, &name, force)?;
            issued_text(&dir, &name, &issued)
        }
    };
    print!("{text}");
    Ok(0)
}

fn init_text(dir: &Path, report: &InitReport) -> String {
    let d = dir.display();
    let mut out = String::new();
    if report.new_ca {
        let _ = writeln!(out, "made a lab CA and a server certificate in {d}:");
        let _ = writeln!(
            out,
            "  {}       the CA: every agent and cis490ctl trusts it (--ca-file), the server \
             checks client certificates with it (--client-ca-file)",
            certs::CA_CERT
        );
        let _ = writeln!(
            out,
            "  {}   the CA's private key (owner-only): signs agent certificates; keep it here",
            certs::CA_KEY
        );
    } else {
        let _ = writeln!(
            out,
            "kept the lab CA in {d} and made a new server certificate:"
        );
    }
    let _ = writeln!(
        out,
        "  {}, {}   the server's certificate and key, valid for: {}",
        certs::SERVER_CERT,
        certs::SERVER_KEY,
        report.sans.join(", ")
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "next:");
    let _ = writeln!(
        out,
        "  cis490-reconciler certs issue-agent NAME --dir {d}   # one per agent"
    );
    let _ = writeln!(
        out,
        "  cis490-reconciler serve --tls-cert-file {} --tls-key-file {} --client-ca-file {} ...",
        report.server_cert.display(),
        report.server_key.display(),
        report.ca_cert.display()
    );
    out
}

fn issued_text(dir: &Path, name: &WorkerName, issued: &IssuedAgent) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "made a client certificate for worker {name}: {} and {} (the key is owner-only)",
        issued.cert.display(),
        issued.key.display()
    );
    let _ = writeln!(
        out,
        "copy them with {} to the agent's host and run:",
        dir.join(certs::CA_CERT).display()
    );
    let _ = writeln!(
        out,
        "  cis490-agent run --server https://SERVER:8787 --name {name} --ca-file ca.pem \
         --cert-file {} --key-file {}",
        certs::agent_cert_file(name),
        certs::agent_key_file(name)
    );
    out
}
