//! A shared 2D board: everyone's cursor with name and colour, shapes anyone can spawn
//! and drag, a shared note, undo, and the diagnostics overlay.
//!
//! ```sh
//! # three players on this machine (a signaling server in-process, three windows)
//! cargo run --release --features demo --example board -- --players 3
//! # join a room like a real player
//! cargo run --release --features demo --example board -- --room ws://host:3536/board
//! ```
//!
//! Controls: move the mouse (your cursor shows on the others' boards), `Space` or
//! right click spawns a shape, drag a shape with the left button (its owner hands it
//! over on request; while dragging it streams on the unreliable channel, on release it
//! is committed to the document), type in the note (two players typing merge letter by
//! letter), `Ctrl+Z` / `Ctrl+Y` undo and redo your own note edits, `F3` toggles the
//! overlay.
//!
//! `--script` plays a fixed sequence (spawn, drag, type), writes a screenshot and the
//! board's state next to it (`--out DIR`), and exits: CI uses it under Xvfb.

use bevy::prelude::*;
#[cfg(not(target_arch = "wasm32"))]
use bevy::render::view::screenshot::{Screenshot, save_to_disk};
use bevy::window::{PrimaryWindow, WindowPosition, WindowResolution};
use bevy_egui::{EguiContexts, EguiPrimaryContextPass, egui};
use bevy_peer_sync::diagnostics::overlay::{OverlayVisible, PeerSyncOverlayPlugin};
use bevy_peer_sync::entity::NetEntities;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::undo::{Redo, Undo, UndoPlugin};
use bevy_peer_sync::yrs::Text;
use serde::{Deserialize, Serialize};

#[path = "support/players.rs"]
mod players;
use players::arg;

const PALETTE: [[u8; 3]; 6] = [
    [230, 80, 70],
    [60, 150, 230],
    [90, 190, 100],
    [240, 180, 50],
    [170, 100, 220],
    [40, 190, 190],
];
const WIDTH: u32 = 800;
const HEIGHT: u32 = 560;

/// A shape on the board (durable: spawned, owned and kept in the document).
#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Shape {
    color: [u8; 3],
    size: f32,
}

#[derive(Resource, Debug, Clone)]
struct Options {
    index: usize,
    script: bool,
    headless: bool,
    /// With `--script`: how many other players to wait for before starting.
    expect_peers: usize,
    /// `--hostile` (native, with `--headless`): spray every peer with the crate's
    /// hostile inputs (`bevy_peer_sync::testing::hostile`) instead of playing.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    hostile: bool,
    /// Where scripted runs write (native only).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    out: std::path::PathBuf,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(players) = arg(&args, "--players") {
        let players: usize = players.parse().expect("--players takes a number");
        return players::launch_players(players, "board", &args);
    }
    let room = arg(&args, "--room").unwrap_or_else(|| players::default_room("board"));
    let options = Options {
        index: players::player_index(&args),
        script: args.iter().any(|a| a == "--script")
            || cfg!(target_arch = "wasm32") && web_query_has("script"),
        out: players::out_dir(&args),
        headless: args.iter().any(|a| a == "--headless"),
        hostile: args.iter().any(|a| a == "--hostile"),
        expect_peers: arg(&args, "--expect-peers")
            .or_else(|| web_query("peers"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    };
    run_player(&room, options);
}

/// The value of `name` in the page's query string (`?peers=2`), in the browser.
fn web_query(name: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        return players::web_query(name);
    }
    #[allow(unreachable_code)]
    {
        let _ = name;
        None
    }
}

/// Whether the page's query string has `name` (`?script`), in the browser.
fn web_query_has(name: &str) -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        return players::web_query_has(name);
    }
    #[allow(unreachable_code)]
    {
        let _ = name;
        false
    }
}

fn run_player(room: &str, options: Options) {
    let index = options.index;
    let color = PALETTE[index % PALETTE.len()];
    let mut app = App::new();
    if options.headless {
        // A peer with no window (`--headless --script`): the browser check's native
        // player, on machines without a display.
        // At 60 Hz, like a windowed player: a busy loop would take a whole core from
        // the browser tabs sharing the machine.
        app.add_plugins(
            MinimalPlugins.set(bevy::app::ScheduleRunnerPlugin::run_loop(
                std::time::Duration::from_secs_f64(1.0 / 60.0),
            )),
        )
        .add_plugins(bevy::log::LogPlugin::default());
    } else {
        // In the browser `?log=bevy_peer_sync=debug` adds to the log filter.
        let mut log = bevy::log::LogPlugin::default();
        if let Some(filter) = web_query("log") {
            log.filter = format!("{},{filter}", log.filter);
        }
        app.add_plugins(DefaultPlugins.set(log).set(WindowPlugin {
            primary_window: Some(Window {
                title: format!("bevy_peer_sync board · player {}", index + 1),
                resolution: WindowResolution::new(WIDTH, HEIGHT),
                position: WindowPosition::At(players::window_offset(index)),
                canvas: Some("#board".into()),
                fit_canvas_to_parent: true,
                ..default()
            }),
            ..default()
        }))
        .insert_resource(ClearColor(Color::srgb(0.12, 0.13, 0.16)))
        .add_plugins(PeerSyncOverlayPlugin::default())
        .init_resource::<NoteBuffer>()
        .add_systems(Startup, setup)
        .add_systems(
            Update,
            (
                read_mouse.before(track_cursor),
                spawn_on_input.after(track_cursor),
                draw_shapes,
                draw_remote_cursors,
                keys,
            ),
        )
        .add_systems(EguiPrimaryContextPass, note_window);
    }
    app.add_plugins(PeerSyncPlugin::new(room))
        .add_plugins(UndoPlugin::texts(["note"]))
        .sync_component::<Shape>(Route::Durable)
        .sync_transform(TransformEncoding::Quantized {
            position_precision: 0.01,
        })
        .smooth_component::<Transform>(SmoothingConfig::default())
        .insert_resource(LocalPresence::new(
            format!("player {}", index + 1),
            Color::srgb_u8(color[0], color[1], color[2]),
        ))
        .insert_resource(options.clone())
        .init_resource::<Dragging>()
        .init_resource::<VirtualMouse>()
        .init_resource::<ScriptClock>()
        .add_systems(Update, (track_cursor, drag_shapes).chain());
    if options.script {
        app.init_resource::<Refused>().add_systems(
            Update,
            (tally_refused, run_script).chain().before(track_cursor),
        );
    }
    #[cfg(not(target_arch = "wasm32"))]
    if options.hostile {
        app.insert_resource(LocalPresence::new("hostile", Color::WHITE))
            .add_systems(Update, spray);
    }
    app.run();
}

/// `--hostile`: every peer this one connects to is sent the crate's hostile spray
/// (`testing::hostile::datagrams`: document bombs, floods of asks, broken fragments,
/// garbage on every kind) three times, 3 s apart, straight onto the transport; after
/// 2 minutes it leaves. The browser check runs it against the tabs: they must refuse it all
/// (their `refused` count), keep running and still converge.
#[cfg(not(target_arch = "wasm32"))]
fn spray(
    time: Res<Time<Real>>,
    mut io: ResMut<TransportIo>,
    peers: Query<(&Peer, &PeerLink)>,
    mut sent: Local<std::collections::HashMap<PeerId, (u64, f32)>>,
    mut exit: MessageWriter<AppExit>,
) {
    use bevy_peer_sync::net::transport::Packet;
    let now = time.elapsed_secs();
    for (peer, link) in &peers {
        if *link != PeerLink::Connected {
            continue;
        }
        let (rounds, next) = sent.entry(peer.id).or_insert((0, now));
        if *rounds < 3 && now >= *next {
            let spray = bevy_peer_sync::testing::hostile::datagrams(*rounds);
            info!(
                "spraying `{}` hostile datagrams at peer `{}`",
                spray.len(),
                peer.id
            );
            for (channel, bytes) in spray {
                io.send(Packet {
                    peer: peer.id,
                    channel,
                    bytes,
                });
            }
            *rounds += 1;
            *next = now + 3.0;
        }
    }
    if now > 120.0 {
        exit.write(AppExit::Success);
    }
}

/// What each link refused, kept after the link is gone: a hostile peer that is told to
/// leave takes its `PeerStats` with it, and the browser check counts what it sent.
#[derive(Resource, Default)]
struct Refused(std::collections::HashMap<Entity, u64>);

fn tally_refused(stats: Query<(Entity, &PeerStats)>, mut refused: ResMut<Refused>) {
    for (link, stats) in &stats {
        let count = refused.0.entry(link).or_default();
        *count = (*count).max(stats.dropped_total());
    }
}

fn setup(mut commands: Commands) {
    commands.spawn(Camera2d);
}

/// The world position of the mouse, or of the script's virtual mouse.
#[derive(Resource, Default)]
struct VirtualMouse {
    at: Option<Vec2>,
    pressed: bool,
    just_pressed: bool,
    just_released: bool,
}

fn track_cursor(mouse: Res<VirtualMouse>, mut me: ResMut<LocalPresence>) {
    if me.cursor != mouse.at {
        me.cursor = mouse.at;
    }
}

/// The real mouse, in world coordinates; a press over an egui window is egui's.
fn read_mouse(
    windows: Query<&Window, With<PrimaryWindow>>,
    cameras: Query<(&Camera, &GlobalTransform)>,
    buttons: Res<ButtonInput<MouseButton>>,
    options: Res<Options>,
    mut contexts: EguiContexts,
    mut mouse: ResMut<VirtualMouse>,
) {
    if options.script {
        return;
    }
    let (Ok(window), Ok((camera, transform))) = (windows.single(), cameras.single()) else {
        return;
    };
    mouse.at = window
        .cursor_position()
        .and_then(|p| camera.viewport_to_world_2d(transform, p).ok());
    let over_ui = contexts
        .ctx_mut()
        .map(|c| c.egui_wants_pointer_input())
        .unwrap_or(false);
    mouse.pressed = buttons.pressed(MouseButton::Left);
    mouse.just_pressed = buttons.just_pressed(MouseButton::Left) && !over_ui;
    mouse.just_released = buttons.just_released(MouseButton::Left);
}

fn spawn_shape(commands: &mut Commands, at: Vec2, color: [u8; 3], size: f32) {
    commands.spawn((
        Replicated,
        Shape { color, size },
        Transform::from_translation(at.extend(0.0)),
    ));
}

fn spawn_on_input(
    mut commands: Commands,
    mouse: Res<ButtonInput<MouseButton>>,
    keys: Res<ButtonInput<KeyCode>>,
    mut contexts: EguiContexts,
    me: Res<LocalPresence>,
    options: Res<Options>,
    count: Query<(), With<Shape>>,
) {
    if options.script {
        return;
    }
    let egui_wants = contexts
        .ctx_mut()
        .map(|c| c.egui_wants_keyboard_input() || c.egui_wants_pointer_input())
        .unwrap_or(false);
    if egui_wants {
        return;
    }
    if let Some(at) = me.cursor
        && (mouse.just_pressed(MouseButton::Right) || keys.just_pressed(KeyCode::Space))
    {
        let n = count.iter().count();
        let color = PALETTE[(options.index + n) % PALETTE.len()];
        spawn_shape(&mut commands, at, color, 50.0 + 10.0 * (n % 3) as f32);
    }
}

#[derive(Resource, Default)]
struct Dragging {
    entity: Option<Entity>,
    grab_offset: Vec2,
    waiting_for_ownership: bool,
}

fn drag_shapes(
    mouse: Res<VirtualMouse>,
    me: Res<LocalPresence>,
    local: Res<LocalPeer>,
    mut dragging: ResMut<Dragging>,
    mut shapes: Query<(Entity, &Shape, &mut Transform, &Owner)>,
    mut requests: MessageWriter<RequestOwnership>,
    mut commits: MessageWriter<CommitTransient>,
) {
    let (pressed, just_pressed, just_released) =
        (mouse.pressed, mouse.just_pressed, mouse.just_released);
    let Some(at) = me.cursor else { return };
    if just_pressed {
        let hit = shapes
            .iter()
            .filter(|(_, shape, transform, _)| {
                (at - transform.translation.truncate()).abs().max_element() <= shape.size / 2.0
            })
            .max_by(|a, b| a.2.translation.z.total_cmp(&b.2.translation.z))
            .map(|(entity, _, transform, owner)| {
                (entity, transform.translation.truncate(), owner.0)
            });
        if let Some((entity, position, owner)) = hit {
            dragging.entity = Some(entity);
            dragging.grab_offset = position - at;
            dragging.waiting_for_ownership = owner != Some(local.replica());
            if dragging.waiting_for_ownership {
                requests.write(RequestOwnership { entity });
            }
        }
    }
    let Some(entity) = dragging.entity else {
        return;
    };
    let Ok((_, _, mut transform, owner)) = shapes.get_mut(entity) else {
        dragging.entity = None;
        return;
    };
    let mine = owner.0 == Some(local.replica());
    if pressed && mine {
        dragging.waiting_for_ownership = false;
        let target = (at + dragging.grab_offset).extend(transform.translation.z);
        if transform.translation != target {
            transform.translation = target;
        }
    }
    if just_released || !pressed {
        if mine {
            commits.write(CommitTransient { entity });
        }
        dragging.entity = None;
    }
}

fn draw_shapes(mut commands: Commands, shapes: Query<(Entity, &Shape), Changed<Shape>>) {
    for (entity, shape) in &shapes {
        let [r, g, b] = shape.color;
        commands.entity(entity).insert((
            Sprite::from_color(Color::srgb_u8(r, g, b), Vec2::splat(shape.size)),
            Visibility::default(),
        ));
    }
}

/// Marks the visual of a remote cursor, on the remote peer's entity.
#[derive(Component)]
struct CursorVisual;

type RemoteCursor<'a> = (
    Entity,
    Option<&'a PeerPresence>,
    Option<&'a PeerCursor>,
    Has<Away>,
    Has<CursorVisual>,
);

fn draw_remote_cursors(mut commands: Commands, peers: Query<RemoteCursor, With<Peer>>) {
    for (entity, presence, cursor, away, has_visual) in &peers {
        let at = cursor.and_then(|c| c.0);
        let (Some(presence), Some(at)) = (presence, at) else {
            if has_visual {
                commands.entity(entity).insert(Visibility::Hidden);
            }
            continue;
        };
        let alpha = if away { 0.35 } else { 1.0 };
        let color = presence.color.with_alpha(alpha);
        let transform = Transform::from_translation(at.extend(10.0));
        if has_visual {
            commands.entity(entity).insert((
                transform,
                Visibility::Visible,
                Sprite::from_color(color, Vec2::splat(12.0)),
            ));
        } else {
            commands
                .entity(entity)
                .insert((
                    CursorVisual,
                    transform,
                    Visibility::Visible,
                    Sprite::from_color(color, Vec2::splat(12.0)),
                ))
                .with_child((
                    Text2d::new(presence.name.clone()),
                    TextFont::from_font_size(14.0),
                    TextColor(Color::WHITE),
                    Transform::from_xyz(8.0, -16.0, 0.0),
                    bevy::sprite::Anchor::TOP_LEFT,
                ));
        }
    }
}

fn keys(
    keys: Res<ButtonInput<KeyCode>>,
    mut overlay: ResMut<OverlayVisible>,
    mut undo: MessageWriter<Undo>,
    mut redo: MessageWriter<Redo>,
) {
    let ctrl = keys.any_pressed([KeyCode::ControlLeft, KeyCode::ControlRight]);
    if ctrl && keys.just_pressed(KeyCode::KeyZ) {
        undo.write(Undo);
    }
    if ctrl && keys.just_pressed(KeyCode::KeyY) {
        redo.write(Redo);
    }
    if keys.just_pressed(KeyCode::F3) {
        overlay.0 = !overlay.0;
    }
}

/// The note as this peer last saw it; edits are diffed against it.
#[derive(Resource, Default)]
struct NoteBuffer {
    text: String,
}

/// Applies the change from `old` to `new` to the shared text as one splice (egui
/// hands over the whole edited string; a keystroke or a paste is one splice).
fn splice(doc: &SharedDoc, old: &str, new: &str) {
    let prefix = old
        .char_indices()
        .zip(new.chars())
        .find(|((_, a), b)| a != b)
        .map_or(old.len().min(new.len()), |((i, _), _)| i);
    let prefix = (0..=prefix)
        .rev()
        .find(|&i| old.is_char_boundary(i) && new.is_char_boundary(i))
        .unwrap_or(0);
    let max_suffix = old.len().min(new.len()) - prefix;
    let mut suffix = old
        .bytes()
        .rev()
        .zip(new.bytes().rev())
        .take(max_suffix)
        .take_while(|(a, b)| a == b)
        .count();
    while !old.is_char_boundary(old.len() - suffix) || !new.is_char_boundary(new.len() - suffix) {
        suffix -= 1;
    }
    let removed = &old[prefix..old.len() - suffix];
    let inserted = &new[prefix..new.len() - suffix];
    let text = doc.text("note");
    let mut txn = doc.transact_mut();
    if !removed.is_empty() {
        text.remove_range(&mut txn, prefix as u32, removed.len() as u32);
    }
    if !inserted.is_empty() {
        text.insert(&mut txn, prefix as u32, inserted);
    }
}

fn note_window(
    mut contexts: EguiContexts,
    doc: Res<SharedDoc>,
    mut buffer: ResMut<NoteBuffer>,
    mut undo: MessageWriter<Undo>,
    mut redo: MessageWriter<Redo>,
) -> Result {
    let ctx = contexts.ctx_mut()?;
    let shared = doc.text_string("note");
    let mut text = shared.clone();
    egui::Window::new("shared note")
        .anchor(egui::Align2::LEFT_BOTTOM, [8.0, -8.0])
        .resizable(false)
        .show(ctx, |ui| {
            ui.add(
                egui::TextEdit::multiline(&mut text)
                    .desired_rows(4)
                    .desired_width(260.0)
                    .hint_text("type here: everyone sees it"),
            );
            ui.horizontal(|ui| {
                if ui.button("undo").clicked() {
                    undo.write(Undo);
                }
                if ui.button("redo").clicked() {
                    redo.write(Redo);
                }
            });
        });
    if text != shared {
        splice(&doc, &shared, &text);
    }
    buffer.text = text;
    Ok(())
}

/// Native: next to the screenshot. Browser: into the page, for the test to read.
fn write_state(options: &Options, state: &str) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let path = options
            .out
            .join(format!("board-player{}.txt", options.index + 1));
        std::fs::write(&path, state).expect("the state file is written");
        info!("scripted run done: `{}`", path.display());
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = options;
        if let Some(element) = web_sys::window()
            .and_then(|w| w.document())
            .and_then(|d| d.get_element_by_id("board-state"))
        {
            element.set_text_content(Some(state));
        }
    }
}

/// The scripted session's clock: started once the whole room is here.
#[derive(Resource, Default)]
struct ScriptClock {
    started: Option<f32>,
    done: Vec<&'static str>,
    /// When this player wrote its view of the board.
    dumped: Option<f32>,
}

impl ScriptClock {
    /// Whether step `name` at `at` seconds is due now, the first time only.
    fn due(&mut self, now: f32, at: f32, name: &'static str) -> bool {
        if now >= at && !self.done.contains(&name) {
            self.done.push(name);
            return true;
        }
        false
    }
}

/// The scripted session: the same steps at the same times (from when the full room
/// is present) on every player, whatever its frame rate.
#[allow(clippy::too_many_arguments)]
fn run_script(
    mut commands: Commands,
    time: Res<Time<Real>>,
    mut clock: ResMut<ScriptClock>,
    options: Res<Options>,
    mut mouse: ResMut<VirtualMouse>,
    doc: Res<SharedDoc>,
    links: Query<&PeerLink>,
    shapes: Query<(&NetId, &Shape, &Transform)>,
    net: Res<NetEntities>,
    peers: Query<&PeerPresence>,
    refused: Res<Refused>,
    mut exit: MessageWriter<AppExit>,
) {
    let now = time.elapsed_secs();
    let start = match clock.started {
        Some(start) => start,
        None => {
            let here = links.iter().filter(|l| **l == PeerLink::Connected).count();
            if here < options.expect_peers || (options.expect_peers == 0 && here == 0) {
                return;
            }
            clock.started = Some(now);
            now
        }
    };
    let t = now - start;
    let i = options.index as f32;
    mouse.just_pressed = false;
    mouse.just_released = false;
    let home = Vec2::new(-260.0 + 170.0 * i, 120.0 - 60.0 * i);
    // The cursor wanders on a small circle around the player's home.
    mouse.at = Some(home + Vec2::new(40.0 * (2.0 * t).cos(), 40.0 * (2.0 * t).sin()));
    if clock.due(t, 1.5, "spawn") {
        let color = PALETTE[options.index % PALETTE.len()];
        spawn_shape(&mut commands, home, color, 60.0);
    }
    if options.index == 0 && (2.5..4.0).contains(&t) {
        // Player 1 grabs its shape in the middle and drags it across the board.
        let progress = (t - 2.5) / 1.5;
        mouse.at = Some(home + Vec2::new(300.0 * progress, -200.0 * progress));
        mouse.just_pressed = clock.due(t, 2.5, "grab");
        mouse.pressed = true;
    } else if mouse.pressed {
        mouse.pressed = false;
        mouse.just_released = true;
    }
    if clock.due(t, 4.5, "type") {
        let text = doc.text("note");
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        text.insert(
            &mut txn,
            len,
            &format!("hello from player {} ", options.index + 1),
        );
    }
    #[cfg(not(target_arch = "wasm32"))]
    if !options.headless && clock.due(t, 7.0, "screenshot") {
        let path = options
            .out
            .join(format!("board-player{}.png", options.index + 1));
        commands
            .spawn(Screenshot::primary_window())
            .observe(save_to_disk(path));
    }
    // The view is written once every player's shape and line are here (from 8 s, when
    // the drag has long been committed), or at 30 s whatever it holds: the check
    // compares what each saw, and slow players (software-rendered browser tabs) must
    // not make it a race.
    let players = options.expect_peers + 1;
    let complete = t >= 8.0
        && shapes.iter().count() == players
        && doc.text_string("note").matches("hello from player").count() == players;
    if (complete || t >= 30.0) && clock.due(t, 8.0, "dump") {
        clock.dumped = Some(t);
        let mut lines: Vec<String> = shapes
            .iter()
            .map(|(id, shape, transform)| {
                format!(
                    "shape {id} color {:?} size {} at {:.0},{:.0}",
                    shape.color, shape.size, transform.translation.x, transform.translation.y
                )
            })
            .collect();
        lines.sort();
        let mut names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
        names.sort();
        // Concurrent appends merge in an order every peer agrees on.
        lines.push(format!("note {:?}", doc.text_string("note")));
        lines.push(format!("entities {}", net.len()));
        let state = lines.join("\n") + "\n";
        // What this player refused from peers (a hostile one's spray, in the browser
        // check): on the `sees` line, which differs between players.
        let refused: u64 = refused.0.values().sum();
        let peers_line = format!("sees {names:?}, refused {refused}\n");
        write_state(&options, &(state + &peers_line));
    }
    // Stay a while, so slower players can still read this one's state before it goes.
    if !cfg!(target_arch = "wasm32")
        && let Some(dumped) = clock.dumped
        && clock.due(t, dumped + 4.0, "exit")
    {
        exit.write(AppExit::Success);
    }
}
