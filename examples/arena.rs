//! Avatars moving at 60 Hz and a durable scoreboard: the transient route under motion.
//!
//! ```sh
//! cargo run --release --features demo --example arena -- --players 3
//! ```
//!
//! `WASD` or the arrow keys move your square (its `Transform` streams on the
//! unreliable channel, quantized to a centimetre, and is smoothed on the others'
//! screens). Touch a coin to take it: you ask its owner for it, and once it is yours
//! you remove it and your `Score` (a durable component) goes up. Everyone sees the
//! same scoreboard; a player who joins late gets it from the document.
//!
//! `--script --out DIR` (with `--players N`): every avatar walks a circle by itself
//! once the room is full; each player saves a screenshot to `DIR` after 6 s and
//! quits after 8 s.

use bevy::prelude::*;
use bevy::window::{WindowPosition, WindowResolution};
use bevy_peer_sync::diagnostics::overlay::PeerSyncOverlayPlugin;
use bevy_peer_sync::prelude::*;
use serde::{Deserialize, Serialize};

#[path = "support/players.rs"]
mod players;
use players::arg;

const SPEED: f32 = 260.0;
const COLORS: [[u8; 3]; 4] = [
    [230, 80, 70],
    [60, 150, 230],
    [90, 190, 100],
    [240, 180, 50],
];

/// A player's square (durable: who it is; its `Transform` is transient).
#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Avatar {
    name: String,
    color: [u8; 3],
}

/// Coins taken (durable: merged, kept for late joiners).
#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Score(u32);

/// A coin on the floor (durable).
#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Coin;

/// The local player's avatar.
#[derive(Resource)]
struct Me(Entity);

#[derive(Resource)]
struct Index(usize);

/// `--script`: where to save the screenshot, how many peers to wait for, and when
/// the room was full.
#[derive(Resource)]
struct Script {
    index: usize,
    out: std::path::PathBuf,
    expect_peers: usize,
    started: Option<f32>,
    shot: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(players) = arg(&args, "--players") {
        let players: usize = players.parse().expect("--players takes a number");
        return players::launch_players(players, "arena", &args);
    }
    let room = arg(&args, "--room").unwrap_or_else(|| players::default_room("arena"));
    let index = players::player_index(&args);
    let mut app = App::new();
    if args.iter().any(|a| a == "--script") {
        app.insert_resource(Script {
            index,
            out: players::out_dir(&args),
            expect_peers: arg(&args, "--expect-peers").map_or(0, |n| n.parse().unwrap_or(0)),
            started: None,
            shot: false,
        })
        .add_systems(Update, run_script.before(move_avatar));
    }
    app.add_plugins(DefaultPlugins.set(WindowPlugin {
        primary_window: Some(Window {
            title: format!("bevy_peer_sync arena · player {}", index + 1),
            resolution: WindowResolution::new(640, 480),
            position: WindowPosition::At(players::window_offset(index)),
            canvas: Some("#arena".into()),
            fit_canvas_to_parent: true,
            ..default()
        }),
        ..default()
    }))
    .insert_resource(ClearColor(Color::srgb(0.1, 0.1, 0.12)))
    .add_plugins(PeerSyncPlugin::new(room))
    .add_plugins(PeerSyncOverlayPlugin { collapsed: true })
    .sync_component::<Avatar>(Route::Durable)
    .sync_component::<Score>(Route::Durable)
    .sync_component::<Coin>(Route::Durable)
    .sync_transform(TransformEncoding::Quantized {
        position_precision: 0.01,
    })
    .smooth_component::<Transform>(SmoothingConfig::default())
    .insert_resource(Index(index))
    .add_systems(Startup, setup)
    .add_systems(Update, (move_avatar, take_coins, draw, scoreboard))
    .run();
}

fn setup(mut commands: Commands, index: Res<Index>) {
    commands.spawn(Camera2d);
    let color = COLORS[index.0 % COLORS.len()];
    let me = commands
        .spawn((
            Replicated,
            Avatar {
                name: format!("player {}", index.0 + 1),
                color,
            },
            Score(0),
            Transform::from_xyz(-200.0 + 120.0 * index.0 as f32, -150.0, 1.0),
        ))
        .id();
    commands.insert_resource(Me(me));
    // Each player drops three coins; anyone can take them.
    for k in 0..3 {
        let x = -240.0 + 160.0 * k as f32 + 40.0 * index.0 as f32;
        let y = 60.0 + 50.0 * index.0 as f32;
        commands.spawn((Replicated, Coin, Transform::from_xyz(x, y, 0.0)));
    }
    commands.spawn((
        Text2d::new(""),
        TextFont::from_font_size(16.0),
        bevy::sprite::Anchor::TOP_LEFT,
        Transform::from_xyz(-310.0, 230.0, 5.0),
        Scoreboard,
    ));
}

/// `--script`: walks the avatar on a circle once the room is full, then takes a
/// screenshot and quits.
fn run_script(
    mut commands: Commands,
    time: Res<Time<Real>>,
    mut script: ResMut<Script>,
    me: Res<Me>,
    links: Query<&PeerLink>,
    mut transforms: Query<&mut Transform>,
    mut exit: MessageWriter<AppExit>,
) {
    let now = time.elapsed_secs();
    let start = match script.started {
        Some(start) => start,
        None => {
            let here = links.iter().filter(|l| **l == PeerLink::Connected).count();
            if here < script.expect_peers {
                return;
            }
            *script.started.insert(now)
        }
    };
    let t = now - start;
    let index = script.index;
    let phase = index as f32 * 2.1 + 0.9 * t;
    if let Ok(mut transform) = transforms.get_mut(me.0) {
        let centre = Vec2::new(-120.0 + 120.0 * index as f32, 0.0);
        transform.translation = (centre + 110.0 * Vec2::new(phase.cos(), phase.sin())).extend(1.0);
    }
    if t >= 6.0 && !script.shot {
        script.shot = true;
        let path = script.out.join(format!("arena-player{}.png", index + 1));
        commands
            .spawn(bevy::render::view::screenshot::Screenshot::primary_window())
            .observe(bevy::render::view::screenshot::save_to_disk(path));
    }
    if t >= 8.0 {
        exit.write(AppExit::Success);
    }
}

fn move_avatar(
    keys: Res<ButtonInput<KeyCode>>,
    time: Res<Time>,
    me: Res<Me>,
    mut transforms: Query<&mut Transform>,
) {
    let mut direction = Vec2::ZERO;
    for (keys_for, step) in [
        ([KeyCode::KeyW, KeyCode::ArrowUp], Vec2::Y),
        ([KeyCode::KeyS, KeyCode::ArrowDown], -Vec2::Y),
        ([KeyCode::KeyA, KeyCode::ArrowLeft], -Vec2::X),
        ([KeyCode::KeyD, KeyCode::ArrowRight], Vec2::X),
    ] {
        if keys.any_pressed(keys_for) {
            direction += step;
        }
    }
    if direction == Vec2::ZERO {
        return;
    }
    if let Ok(mut transform) = transforms.get_mut(me.0) {
        let moved =
            transform.translation.truncate() + direction.normalize() * SPEED * time.delta_secs();
        transform.translation = moved
            .clamp(Vec2::new(-300.0, -220.0), Vec2::new(300.0, 220.0))
            .extend(1.0);
    }
}

/// Touching a coin asks for it; a coin that is ours and touched is taken.
fn take_coins(
    mut commands: Commands,
    me: Res<Me>,
    local: Res<LocalPeer>,
    mut avatars: Query<(&Transform, &mut Score), With<Avatar>>,
    coins: Query<(Entity, &Transform, &Owner), With<Coin>>,
    mut asked: Local<Vec<Entity>>,
    mut requests: MessageWriter<RequestOwnership>,
) {
    let Ok((mine, mut score)) = avatars.get_mut(me.0) else {
        return;
    };
    let at = mine.translation.truncate();
    for (coin, transform, owner) in &coins {
        if transform.translation.truncate().distance(at) > 30.0 {
            continue;
        }
        if owner.0 == Some(local.replica()) {
            commands.entity(coin).despawn();
            score.0 += 1;
        } else if !asked.contains(&coin) {
            asked.push(coin);
            requests.write(RequestOwnership { entity: coin });
        }
    }
}

fn draw(
    mut commands: Commands,
    avatars: Query<(Entity, &Avatar), Without<Sprite>>,
    coins: Query<Entity, (With<Coin>, Without<Sprite>)>,
) {
    for (entity, avatar) in &avatars {
        let [r, g, b] = avatar.color;
        commands.entity(entity).insert(Sprite::from_color(
            Color::srgb_u8(r, g, b),
            Vec2::splat(36.0),
        ));
    }
    for entity in &coins {
        commands.entity(entity).insert(Sprite::from_color(
            Color::srgb(1.0, 0.85, 0.2),
            Vec2::splat(14.0),
        ));
    }
}

#[derive(Component)]
struct Scoreboard;

fn scoreboard(
    avatars: Query<(&Avatar, &Score)>,
    coins: Query<(), With<Coin>>,
    mut text: Query<&mut Text2d, With<Scoreboard>>,
) {
    let Ok(mut text) = text.single_mut() else {
        return;
    };
    let mut rows: Vec<_> = avatars.iter().collect();
    rows.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.name.cmp(&b.0.name)));
    let mut board = format!("coins left: {}\n", coins.iter().count());
    for (avatar, score) in rows {
        board.push_str(&format!("{:<10} {}\n", avatar.name, score.0));
    }
    if text.0 != board {
        text.0 = board;
    }
}
