//! Numbers a player (and a developer) can see: per-peer round-trip time, loss and
//! bandwidth on each peer's [`PeerStats`], and room-wide Bevy
//! [`Diagnostic`]s for `DiagnosticsStore`, the log, or an overlay.
//!
//! | diagnostic | unit | what |
//! |---|---|---|
//! | [`PEERS`] | count | peers with a finished handshake |
//! | [`RTT`] | ms | mean smoothed round-trip time over connected peers |
//! | [`LOSS`] | % | mean ping loss over connected peers |
//! | [`BYTES_IN`] / [`BYTES_OUT`] | B/s | all peers, both channels |
//! | [`DROPPED`] | count | datagrams or changes refused so far, all peers (and document updates given up) |
//! | [`DOC_BYTES`] | B | encoded size of the shared and entity documents |
//! | [`DOC_UPDATES`] | 1/s | updates through both documents |
//!
//! Rates are measured once per [`DiagnosticsConfig::sample_every`]; the document
//! size, which costs an encode of the whole state, only when
//! [`DiagnosticsConfig::doc_size_every`] asks for it.
//!
//! With the `egui` feature, [`overlay::PeerSyncOverlayPlugin`] draws all of this in a
//! `bevy_egui` window.
//!
//! ```
//! use bevy::diagnostic::DiagnosticsStore;
//! use bevy::prelude::*;
//! use bevy_peer_sync::diagnostics;
//!
//! fn log_rtt(store: Res<DiagnosticsStore>) {
//!     if let Some(rtt) = store.get(&diagnostics::RTT).and_then(|d| d.smoothed()) {
//!         info!("mean round trip `{rtt:.1}` ms");
//!     }
//! }
//! # let mut app = App::new();
//! # app.add_plugins(MinimalPlugins)
//! #     .add_plugins(bevy_peer_sync::PeerSyncPlugin::with_custom_transport())
//! #     .add_systems(Update, log_rtt);
//! # app.update();
//! ```

#[cfg(feature = "egui")]
pub mod overlay;

use std::time::Duration;

use bevy::diagnostic::{Diagnostic, DiagnosticPath, Diagnostics, RegisterDiagnostic};
use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use crate::doc::SharedDoc;
use crate::durable::EntityDoc;
use crate::net::peer::{Peer, PeerLink};
use crate::net::stats::PeerStats;
use crate::net::transport::Channel;
use crate::schedule::{PeerSyncSystems, StageAppExt, Step};

/// Connected peers.
pub const PEERS: DiagnosticPath = DiagnosticPath::const_new("peer_sync/peers");
/// Mean round-trip time, milliseconds.
pub const RTT: DiagnosticPath = DiagnosticPath::const_new("peer_sync/rtt_ms");
/// Mean ping loss, percent.
pub const LOSS: DiagnosticPath = DiagnosticPath::const_new("peer_sync/loss_percent");
/// Received bytes per second.
pub const BYTES_IN: DiagnosticPath = DiagnosticPath::const_new("peer_sync/bytes_in_per_s");
/// Sent bytes per second.
pub const BYTES_OUT: DiagnosticPath = DiagnosticPath::const_new("peer_sync/bytes_out_per_s");
/// Refused datagrams and changes, total.
pub const DROPPED: DiagnosticPath = DiagnosticPath::const_new("peer_sync/dropped");
/// Encoded size of the documents, bytes.
pub const DOC_BYTES: DiagnosticPath = DiagnosticPath::const_new("peer_sync/doc_bytes");
/// Document updates per second.
pub const DOC_UPDATES: DiagnosticPath = DiagnosticPath::const_new("peer_sync/doc_updates_per_s");

/// How often the diagnostics are measured.
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct DiagnosticsConfig {
    /// Rates, RTT, loss, counts.
    pub sample_every: Duration,
    /// Document size, if wanted: it encodes the whole state, so it is off by default
    /// (and kept rare when on). While on, encoding a document that holds pending
    /// updates was seen to upset yrs 0.28's later integration of them in stress
    /// tests; measure it in tools, not in every game session.
    pub doc_size_every: Option<Duration>,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        Self {
            sample_every: Duration::from_secs(1),
            doc_size_every: None,
        }
    }
}

/// The room-wide figures of the last sample, for overlays and HUDs.
#[derive(Resource, Debug, Clone, Default, PartialEq)]
pub struct RoomDiagnostics {
    /// Peers with a finished handshake.
    pub peers: usize,
    /// Mean round trip over connected peers.
    pub rtt: Option<Duration>,
    /// Mean ping loss (0–1) over connected peers.
    pub loss: Option<f32>,
    /// Bytes per second received, all peers.
    pub bytes_in_per_sec: f64,
    /// Bytes per second sent, all peers.
    pub bytes_out_per_sec: f64,
    /// Refused datagrams and changes, total, with out-of-order document updates
    /// given up for want of their history ([`SyncedDoc::given_up_updates`]).
    ///
    /// [`SyncedDoc::given_up_updates`]: crate::doc::SharedDoc::given_up_updates
    pub dropped: u64,
    /// Encoded document size, bytes, once measured.
    pub doc_bytes: Option<usize>,
    /// Document updates per second.
    pub doc_updates_per_sec: f64,
}

/// Counters at the previous sample, per peer.
#[derive(Component, Debug, Clone, Copy, Default)]
struct LastSample {
    at: Option<Duration>,
    bytes_in: [u64; 2],
    bytes_out: [u64; 2],
}

#[derive(Resource, Debug, Default)]
struct SampleClock {
    last: Option<Duration>,
    last_doc_size: Option<Duration>,
    last_updates: u64,
}

pub(crate) fn plugin(app: &mut App) {
    for (path, suffix) in [
        (PEERS, ""),
        (RTT, " ms"),
        (LOSS, "%"),
        (BYTES_IN, " B/s"),
        (BYTES_OUT, " B/s"),
        (DROPPED, ""),
        (DOC_BYTES, " B"),
        (DOC_UPDATES, "/s"),
    ] {
        app.register_diagnostic(Diagnostic::new(path).with_suffix(suffix));
    }
    app.init_resource::<DiagnosticsConfig>()
        .init_resource::<RoomDiagnostics>()
        .init_resource::<SampleClock>()
        .add_stage_systems(
            PeerSyncSystems::Send,
            (measure_doc_size, measure).chain().in_set(Step::Tally),
        );
}

/// The encoded size of the documents, now and then. Exclusive: it encodes whole
/// documents, and nothing else may touch them meanwhile.
fn measure_doc_size(world: &mut World) {
    let now = world.resource::<Time<Real>>().elapsed();
    let Some(every) = world.resource::<DiagnosticsConfig>().doc_size_every else {
        return;
    };
    let mut clock = world.resource_mut::<SampleClock>();
    if clock.last_doc_size.is_some_and(|at| now < at + every) {
        return;
    }
    clock.last_doc_size = Some(now);
    let size = world.resource::<SharedDoc>().encode_state().len()
        + world
            .get_resource::<EntityDoc>()
            .map_or(0, |e| e.encode_state().len());
    let mut diagnostics = world.resource_mut::<bevy::diagnostic::DiagnosticsStore>();
    if let Some(diagnostic) = diagnostics.get_mut(&DOC_BYTES) {
        diagnostic.add_measurement(bevy::diagnostic::DiagnosticMeasurement {
            time: bevy::platform::time::Instant::now(),
            value: size as f64,
        });
    }
    world.resource_mut::<RoomDiagnostics>().doc_bytes = Some(size);
}

/// The documents whose figures are measured.
#[derive(SystemParam)]
struct Documents<'w> {
    shared: Res<'w, SharedDoc>,
    entities: Option<Res<'w, EntityDoc>>,
}

fn measure(
    mut commands: Commands,
    (time, config): (Res<Time<Real>>, Res<DiagnosticsConfig>),
    mut clock: ResMut<SampleClock>,
    mut room: ResMut<RoomDiagnostics>,
    mut diagnostics: Diagnostics,
    documents: Documents,
    mut peers: Query<(Entity, &PeerLink, &mut PeerStats, Option<&mut LastSample>), With<Peer>>,
) {
    let Documents { shared, entities } = documents;
    let now = time.elapsed();
    let Some(last) = clock.last else {
        clock.last = Some(now);
        return;
    };
    if now < last + config.sample_every {
        return;
    }
    clock.last = Some(now);
    let mut sample = RoomDiagnostics {
        doc_bytes: room.doc_bytes,
        ..Default::default()
    };
    let (mut rtts, mut losses) = (Vec::new(), Vec::new());
    for (entity, link, mut stats, last_sample) in &mut peers {
        let bytes_in = Channel::ALL.map(|c| stats.channel(c).bytes_in);
        let bytes_out = Channel::ALL.map(|c| stats.channel(c).bytes_out);
        match last_sample {
            Some(mut previous) => {
                if let Some(at) = previous.at {
                    let secs = now.saturating_sub(at).as_secs_f64().max(1e-6);
                    for i in 0..2 {
                        stats.rates.bytes_in_per_sec[i] =
                            bytes_in[i].saturating_sub(previous.bytes_in[i]) as f64 / secs;
                        stats.rates.bytes_out_per_sec[i] =
                            bytes_out[i].saturating_sub(previous.bytes_out[i]) as f64 / secs;
                    }
                }
                *previous = LastSample {
                    at: Some(now),
                    bytes_in,
                    bytes_out,
                };
            }
            None => {
                commands.entity(entity).insert(LastSample {
                    at: Some(now),
                    bytes_in,
                    bytes_out,
                });
            }
        }
        sample.bytes_in_per_sec += stats.rates.total_in();
        sample.bytes_out_per_sec += stats.rates.total_out();
        sample.dropped += stats.dropped_total();
        if *link == PeerLink::Connected {
            sample.peers += 1;
            rtts.extend(stats.rtt);
            losses.extend(stats.loss);
        }
    }
    if !rtts.is_empty() {
        sample.rtt = Some(rtts.iter().sum::<Duration>() / rtts.len() as u32);
    }
    if !losses.is_empty() {
        sample.loss = Some(losses.iter().sum::<f32>() / losses.len() as f32);
    }
    sample.dropped +=
        shared.given_up_updates() + entities.as_ref().map_or(0, |e| e.given_up_updates());
    let updates = shared.update_count() + entities.as_ref().map_or(0, |e| e.update_count());
    let secs = config.sample_every.as_secs_f64().max(1e-6);
    sample.doc_updates_per_sec = updates.saturating_sub(clock.last_updates) as f64 / secs;
    clock.last_updates = updates;
    sample.doc_bytes = room.doc_bytes;

    diagnostics.add_measurement(&PEERS, || sample.peers as f64);
    if let Some(rtt) = sample.rtt {
        diagnostics.add_measurement(&RTT, || rtt.as_secs_f64() * 1000.0);
    }
    if let Some(loss) = sample.loss {
        diagnostics.add_measurement(&LOSS, || f64::from(loss) * 100.0);
    }
    diagnostics.add_measurement(&BYTES_IN, || sample.bytes_in_per_sec);
    diagnostics.add_measurement(&BYTES_OUT, || sample.bytes_out_per_sec);
    diagnostics.add_measurement(&DROPPED, || sample.dropped as f64);
    diagnostics.add_measurement(&DOC_UPDATES, || sample.doc_updates_per_sec);
    *room = sample;
}
