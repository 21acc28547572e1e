//! `agentrt-sandbox-agent`: see [`agentrt_sandbox_agent::run`].

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    agentrt_sandbox_agent::run(&args)
}
