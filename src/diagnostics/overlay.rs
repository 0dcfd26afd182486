//! A `bevy_egui` window with the connection state, the peers (name, colour, round
//! trip, loss, bandwidth) and the room's document figures. Feature `egui`.
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_peer_sync::diagnostics::overlay::PeerSyncOverlayPlugin;
//! use bevy_peer_sync::prelude::*;
//!
//! App::new()
//!     .add_plugins(DefaultPlugins)
//!     .add_plugins(PeerSyncPlugin::new("ws://127.0.0.1:3536/room"))
//!     .add_plugins(PeerSyncOverlayPlugin::default())
//!     .run();
//! ```

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bevy_egui::{EguiContexts, EguiPlugin, EguiPrimaryContextPass, egui};

use crate::diagnostics::RoomDiagnostics;
use crate::net::connection::{Connection, ConnectionState};
use crate::net::peer::{LocalPeer, Peer, PeerLink};
use crate::net::stats::PeerStats;
use crate::presence::{Away, LocalPresence, PeerPresence};

/// Adds the overlay (and `bevy_egui`'s plugin, if the app has none yet).
#[derive(Debug, Clone, Default)]
pub struct PeerSyncOverlayPlugin {
    /// Start collapsed.
    pub collapsed: bool,
}

/// Whether the overlay is shown. Toggle it from game code (e.g. on F3).
#[derive(Resource, Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayVisible(pub bool);

impl Plugin for PeerSyncOverlayPlugin {
    fn build(&self, app: &mut App) {
        if !app.is_plugin_added::<EguiPlugin>() {
            app.add_plugins(EguiPlugin::default());
        }
        app.insert_resource(OverlayVisible(true))
            .insert_resource(Collapsed(self.collapsed))
            .add_systems(EguiPrimaryContextPass, draw_overlay);
    }
}

#[derive(Resource)]
struct Collapsed(bool);

fn color32(color: Color) -> egui::Color32 {
    let [r, g, b, a] = color.to_srgba().to_u8_array();
    egui::Color32::from_rgba_unmultiplied(r, g, b, a)
}

fn rate(bytes_per_sec: f64) -> String {
    if bytes_per_sec >= 10_000.0 {
        format!("{:.0} kB/s", bytes_per_sec / 1000.0)
    } else {
        format!("{bytes_per_sec:.0} B/s")
    }
}

type PeerRow<'a> = (
    &'a Peer,
    &'a PeerLink,
    &'a PeerStats,
    Option<&'a PeerPresence>,
    Has<Away>,
);

/// What the overlay shows of this peer and the room.
#[derive(SystemParam)]
struct Here<'w> {
    connection: Res<'w, Connection>,
    room: Res<'w, RoomDiagnostics>,
    local: Res<'w, LocalPeer>,
    me: Res<'w, LocalPresence>,
}

fn draw_overlay(
    mut contexts: EguiContexts,
    visible: Res<OverlayVisible>,
    collapsed: Res<Collapsed>,
    here: Here,
    peers: Query<PeerRow>,
) -> Result {
    let Here {
        connection,
        room,
        local,
        me,
    } = here;
    if !visible.0 {
        return Ok(());
    }
    let ctx = contexts.ctx_mut()?;
    let (state, color) = match connection.state() {
        ConnectionState::Connecting => ("connecting", egui::Color32::YELLOW),
        ConnectionState::Connected => ("connected", egui::Color32::LIGHT_GREEN),
        ConnectionState::Reconnecting => ("reconnecting", egui::Color32::ORANGE),
        ConnectionState::Offline => ("offline", egui::Color32::LIGHT_RED),
    };
    egui::Window::new("peer sync")
        .default_open(!collapsed.0)
        .anchor(egui::Align2::RIGHT_TOP, [-8.0, 8.0])
        .resizable(false)
        .show(ctx, |ui| {
            ui.horizontal(|ui| {
                ui.colored_label(color, state);
                if connection.state() == ConnectionState::Reconnecting {
                    ui.label(format!("(attempt {})", connection.attempt()));
                }
            });
            ui.horizontal(|ui| {
                ui.colored_label(color32(me.color), "■");
                let name = if me.name.is_empty() { "me" } else { &me.name };
                ui.label(format!("{name} · replica {}", local.replica()));
            });
            ui.separator();
            egui::Grid::new("peers").striped(true).show(ui, |ui| {
                for header in ["peer", "rtt", "loss", "in", "out"] {
                    ui.strong(header);
                }
                ui.end_row();
                let mut rows: Vec<_> = peers.iter().collect();
                rows.sort_by_key(|(peer, ..)| peer.id);
                for (peer, link, stats, presence, away) in rows {
                    ui.horizontal(|ui| {
                        let (name, c) = match presence {
                            Some(p) => (p.name.clone(), color32(p.color)),
                            None => (peer.id.to_string()[..8].to_owned(), egui::Color32::GRAY),
                        };
                        ui.colored_label(c, "■");
                        ui.label(name);
                        if away {
                            ui.weak("away");
                        }
                        if *link != PeerLink::Connected {
                            ui.weak(format!("{link:?}").to_lowercase());
                        }
                    });
                    ui.label(stats.rtt.map_or("–".into(), |r| {
                        format!("{:.1} ms", r.as_secs_f64() * 1000.0)
                    }));
                    ui.label(
                        stats
                            .loss
                            .map_or("–".into(), |l| format!("{:.0}%", l * 100.0)),
                    );
                    ui.label(rate(stats.rates.total_in()));
                    ui.label(rate(stats.rates.total_out()));
                    ui.end_row();
                }
            });
            ui.separator();
            ui.label(format!(
                "doc {} · {:.1} updates/s · dropped {}",
                room.doc_bytes
                    .map_or("–".into(), |b| format!("{:.1} kB", b as f64 / 1000.0)),
                room.doc_updates_per_sec,
                room.dropped
            ));
        });
    Ok(())
}
