//! Loads the real editing traces in `tests/data` (CC BY 4.0, from
//! josephg/editing-traces).

#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;

use serde_json::Value;

/// One patch: at code point `pos`, delete `del` code points, insert `ins`.
pub type Patch = (usize, usize, String);

/// A sequential trace.
pub struct Trace {
    pub end_content: String,
    pub txns: Vec<Vec<Patch>>,
}

/// A transaction of a concurrent trace.
pub struct ConcurrentTxn {
    pub agent: usize,
    pub parents: Vec<usize>,
    pub patches: Vec<Patch>,
}

/// A concurrent trace.
pub struct ConcurrentTrace {
    pub num_agents: usize,
    pub end_content: String,
    pub txns: Vec<ConcurrentTxn>,
}

pub fn trace_path(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        root.join("tests/data").join(name),
        root.join("../shared/data/editing-traces").join(name),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| panic!("editing trace `{name}` not found in tests/data"))
}

fn load_json(name: &str) -> Value {
    let file = std::fs::File::open(trace_path(name)).expect("trace file opens");
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("trace is gzip");
    serde_json::from_str(&text).expect("trace is json")
}

fn patches(value: &Value) -> Vec<Patch> {
    value
        .as_array()
        .expect("patches")
        .iter()
        .map(|p| {
            (
                p[0].as_u64().expect("pos") as usize,
                p[1].as_u64().expect("del") as usize,
                p[2].as_str().expect("ins").to_owned(),
            )
        })
        .collect()
}

pub fn load_sequential(name: &str) -> Trace {
    let json = load_json(name);
    Trace {
        end_content: json["endContent"].as_str().expect("endContent").to_owned(),
        txns: json["txns"]
            .as_array()
            .expect("txns")
            .iter()
            .map(|t| patches(&t["patches"]))
            .collect(),
    }
}

pub fn load_concurrent(name: &str) -> ConcurrentTrace {
    let json = load_json(name);
    ConcurrentTrace {
        num_agents: json["numAgents"].as_u64().expect("numAgents") as usize,
        end_content: json["endContent"].as_str().expect("endContent").to_owned(),
        txns: json["txns"]
            .as_array()
            .expect("txns")
            .iter()
            .map(|t| ConcurrentTxn {
                agent: t["agent"].as_u64().expect("agent") as usize,
                parents: t["parents"]
                    .as_array()
                    .expect("parents")
                    .iter()
                    .map(|p| p.as_u64().expect("parent") as usize)
                    .collect(),
                patches: patches(&t["patches"]),
            })
            .collect(),
    }
}
