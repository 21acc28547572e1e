//! The in-sandbox agent. It runs as PID 1 of a sandbox and serves
//! [`protocol`] requests — exec with streamed output, background processes,
//! files — over a Unix socket. Every sandbox driver reuses it unchanged; the
//! `linux` driver also has it build the sandbox first ([`setup`]).

mod entry;
pub mod protocol;
pub mod server;
pub mod setup;

pub use entry::run;
