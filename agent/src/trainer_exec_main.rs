//! cis490-trainer-exec: the agent's parent-death shim as a binary of its own (see
//! `cis490_agent::exec_trainer`). The agent starts trainers through it when it is installed
//! beside the agent, and through the agent's own binary otherwise.

fn main() {
    cis490_agent::exec_trainer::run_if_requested();
    eprintln!(
        "cis490-trainer-exec is started by cis490-agent to run a trainer; it is not run by hand"
    );
    std::process::exit(2);
}
