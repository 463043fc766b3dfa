//! `nekms logs collect`: the enclave's log lines on the parent. A
//! production enclave has no console; with `logs` in its configuration it
//! streams every line here, where they are appended to a file and echoed
//! to stderr (the journal, under systemd).

/// The longest line taken.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Take the enclave's log stream: append it to a file and echo it to stderr (the enclave dials ADDR, vsock://parent:5103: logs in its configuration)
    Collect {
        #[command(flatten)]
        to: super::collect::CollectArgs,
        /// Only the file, not stderr
        #[arg(long)]
        no_echo: bool,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Collect { to: super::collect::CollectArgs { listen, out }, no_echo } => {
            let sink = super::collect::Sink { name: "logs collect", max_line: MAX_LINE, sync: false, echo: !no_echo };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(super::collect::collect(&listen, &out, sink))
        }
    }
}
