//! The command line's flags, for tests that check documents name only real ones.

use std::collections::BTreeSet;

use haproxy_grpc_agent::config::cli;

/// Every long flag the command line accepts, subcommands included.
pub fn known_flags() -> BTreeSet<String> {
    let command = cli::command();
    let mut flags: BTreeSet<String> = ["--help", "--version"].map(String::from).into();
    for command in std::iter::once(&command).chain(command.get_subcommands()) {
        for arg in command.get_arguments() {
            if let Some(long) = arg.get_long() {
                flags.insert(format!("--{long}"));
            }
            for alias in arg.get_all_aliases().unwrap_or_default() {
                flags.insert(format!("--{alias}"));
            }
        }
    }
    flags
}
