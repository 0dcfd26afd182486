//! The bevy_peer_sync signaling server: matchbox's full-mesh signaling.
//!
//! ```text
//! cargo run --bin peer-sync-signal -- [--host 127.0.0.1] [--port 3536]
//! ```
//! Players join `ws://HOST:PORT/<room>`. It listens on 127.0.0.1 unless told otherwise.

use std::net::IpAddr;
use std::process::ExitCode;

const USAGE: &str =
    "usage: peer-sync-signal [--host IP] [--port PORT]   (defaults: 127.0.0.1, 3536)";

fn main() -> ExitCode {
    let mut host: IpAddr = [127, 0, 0, 1].into();
    let mut port: u16 = 3536;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let parsed = match (arg.as_str(), value.as_deref()) {
            ("--host", Some(v)) => v.parse().map(|v| host = v).map_err(|e| e.to_string()),
            ("--port", Some(v)) => v.parse().map(|v| port = v).map_err(|e| e.to_string()),
            ("-h" | "--help", _) => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => Err(format!("unexpected argument `{arg}`")),
        };
        if let Err(error) = parsed {
            eprintln!("{error}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    match bevy_peer_sync::net::signaling::start_signaling_server((host, port)) {
        Ok(server) => {
            println!("signaling on {}", server.room_url("<room>"));
            loop {
                std::thread::park();
            }
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
