//! What both examples share: command-line options and the `--players N` launcher.

#![allow(dead_code)]

/// The value after `name` on the command line.
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The value of `name` in the page's query string (`?room=...&index=1`), decoded.
#[cfg(target_arch = "wasm32")]
pub fn web_query(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search)
        .ok()?
        .get(name)
}

/// Whether the page's query string has `name` at all (`?script`).
#[cfg(target_arch = "wasm32")]
pub fn web_query_has(name: &str) -> bool {
    web_sys::window()
        .and_then(|w| w.location().search().ok())
        .and_then(|q| web_sys::UrlSearchParams::new_with_str(&q).ok())
        .is_some_and(|p| p.has(name))
}

/// The room to join when none is given: in the browser `?room=ws://...` or the
/// serving host's port 3536, natively `ws://127.0.0.1:3536/<room>`.
pub fn default_room(room: &str) -> String {
    #[cfg(target_arch = "wasm32")]
    {
        if let Some(url) = web_query("room") {
            return url;
        }
        let host = web_sys::window()
            .and_then(|w| w.location().hostname().ok())
            .unwrap_or_else(|| "127.0.0.1".into());
        return format!("ws://{host}:3536/{room}");
    }
    #[allow(unreachable_code)]
    {
        format!("ws://127.0.0.1:3536/{room}")
    }
}

/// The player index: `--index N` natively, `?index=N` in the browser.
pub fn player_index(args: &[String]) -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        if let Some(index) = web_query("index") {
            return index.parse().unwrap_or(0);
        }
    }
    arg(args, "--index").map_or(0, |i| i.parse().unwrap_or(0))
}

/// `--out DIR` (default: the working directory), created if it is missing.
pub fn out_dir(args: &[String]) -> std::path::PathBuf {
    let dir: std::path::PathBuf = arg(args, "--out").unwrap_or_else(|| ".".into()).into();
    #[cfg(not(target_arch = "wasm32"))]
    if let Err(error) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create `{}`: {error}", dir.display());
    }
    dir
}

/// `--players N`: starts a signaling server on 127.0.0.1 and N copies of this
/// example as player processes (`--room <url> --index i --expect-peers N-1` added,
/// `--players N` dropped), waits for them, and exits with failure if any failed.
#[cfg(not(target_arch = "wasm32"))]
pub fn launch_players(players: usize, room: &str, args: &[String]) {
    let server = bevy_peer_sync::net::signaling::start_signaling_server(([127, 0, 0, 1], 0))
        .expect("a signaling server starts on 127.0.0.1");
    let url = server.room_url(room);
    println!("room {url}: starting {players} players");
    let exe = std::env::current_exe().expect("the example knows its own path");
    let mut passthrough = Vec::new();
    let mut rest = args.iter().skip(1);
    while let Some(a) = rest.next() {
        if a == "--players" {
            rest.next();
        } else {
            passthrough.push(a.clone());
        }
    }
    let mut children: Vec<_> = (0..players)
        .map(|i| {
            std::process::Command::new(&exe)
                .args(&passthrough)
                .args(["--room", &url, "--index", &i.to_string()])
                .args(["--expect-peers", &(players - 1).to_string()])
                .spawn()
                .expect("a player process starts")
        })
        .collect();
    let mut failed = false;
    for child in &mut children {
        failed |= !child.wait().map(|s| s.success()).unwrap_or(false);
    }
    drop(server);
    if failed {
        std::process::exit(1);
    }
}

/// Where player `index`'s window goes: cascaded so every window shows.
pub fn window_offset(index: usize) -> bevy::math::IVec2 {
    let offset = 40 + 70 * index as i32;
    bevy::math::IVec2::new(offset, offset)
}
