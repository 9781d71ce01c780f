//! A game lobby with chat over the overlay. One member hosts a game; the others see it
//! announced, join, chat, and exchange game messages; everyone sees who joins and who leaves.
//!
//! ```text
//! cargo run --example lobby -- -c alice.toml host "Capture the flag"
//! cargo run --example lobby -- -c bob.toml join            # the first game announced
//! cargo run --example lobby -- -c carol.toml --embed join "Capture the flag"
//! ```
//! Typed lines are chat; `/game TEXT` sends a game message; `/quit` (or end of input) leaves.
//!
//! The protocol is JSON datagrams tagged `"lobby":1`. The host announces the game and its
//! players to every online member each second; a player asks the host to join and then says
//! it is still here each second. A player the host has not heard from for 2.5 s is dropped, and
//! so is one whose node goes offline (the overlay tells at once); players drop a host they
//! have not heard from for 2.5 s. Chat and game messages go from the sender to every player.

#![allow(clippy::disallowed_methods)] // an application keeps real time

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringlet::app::{Event, Member, Overlay};
use ringlet::NodeId;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

const BEAT: Duration = Duration::from_secs(1);
const SILENT_AFTER: Duration = Duration::from_millis(2500);

#[derive(Parser)]
#[command(about = "A game lobby over a ringlet overlay")]
struct Args {
    #[command(flatten)]
    connect: common::Connect,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Host a game
    Host { game: String },
    /// Join a game: the one named, or the first one announced
    Join { game: Option<String> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Player {
    node: String,
    jid: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Msg {
    Announce { game: String, players: Vec<Player> },
    Join { game: String },
    Here,
    Leave,
    Chat { text: String },
    Game { text: String },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    lobby: u8,
    #[serde(flatten)]
    msg: Msg,
}

fn encode(msg: Msg) -> Vec<u8> {
    serde_json::to_vec(&Envelope { lobby: 1, msg }).unwrap_or_default()
}

fn decode(data: &[u8]) -> Option<Msg> {
    match serde_json::from_slice::<Envelope>(data) {
        Ok(Envelope { lobby: 1, msg }) => Some(msg),
        _ => None,
    }
}

/// The game as one participant sees it.
struct Lobby {
    me: NodeId,
    hosting: bool,
    game: Option<String>,
    host: Option<NodeId>,
    /// Players other than the host, with when they were last heard from.
    players: BTreeMap<NodeId, (String, Instant)>,
    host_heard: Instant,
    joined: bool,
}

impl Lobby {
    /// The host first, then the players by name.
    fn roster(&self, overlay: &Overlay) -> Vec<Player> {
        let jid_of = |node: &NodeId| match *node == self.me {
            true => Some(overlay.jid().to_owned()),
            false => overlay.member(node).map(|m| m.jid.clone()),
        };
        let host = self.host.and_then(|h| {
            Some(Player {
                node: h.to_string(),
                jid: jid_of(&h)?,
            })
        });
        let mut players: Vec<Player> = self
            .players
            .iter()
            .map(|(n, (jid, _))| Player {
                node: n.to_string(),
                jid: jid.clone(),
            })
            .collect();
        players.sort_by(|a, b| a.jid.cmp(&b.jid));
        host.into_iter().chain(players).collect()
    }

    fn show_players(&self, overlay: &Overlay) {
        let names: Vec<String> = self.roster(overlay).iter().map(|p| account(&p.jid)).collect();
        common::show(format!("players: {}", names.join(" ")));
    }

    /// Everyone in the game but us.
    fn others(&self) -> Vec<NodeId> {
        self.host
            .into_iter()
            .chain(self.players.keys().copied())
            .filter(|n| *n != self.me)
            .collect()
    }

    fn drop_player(&mut self, node: &NodeId, overlay: &Overlay) {
        if let Some((jid, _)) = self.players.remove(node) {
            common::show(format!("left: {}", account(&jid)));
            self.show_players(overlay);
        }
    }

    fn close_game(&mut self) {
        if let Some(game) = self.game.take() {
            common::show(format!("game \"{game}\" closed: the host left"));
        }
        self.host = None;
        self.players.clear();
        self.joined = false;
    }
}

fn account(jid: &str) -> String {
    jid.split('/').next().unwrap_or(jid).to_owned()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut overlay = args.connect.open().await?;
    let me = overlay.node_id();
    let (hosting, wanted) = match &args.role {
        Role::Host { game } => (true, Some(game.clone())),
        Role::Join { game } => (false, game.clone()),
    };
    let mut lobby = Lobby {
        me,
        hosting,
        game: hosting.then(|| wanted.clone()).flatten(),
        host: hosting.then_some(me),
        players: BTreeMap::new(),
        host_heard: Instant::now(),
        joined: hosting,
    };
    match &lobby.game {
        Some(game) => common::show(format!("hosting \"{game}\"")),
        None => common::show("looking for a game…"),
    }
    let mut input = common::stdin_lines();
    let mut beat = tokio::time::interval(BEAT);
    loop {
        tokio::select! {
            _ = beat.tick() => heartbeat(&mut lobby, &overlay).await?,
            line = input.recv() => {
                let Some(line) = line else { break };
                if line.trim() == "/quit" {
                    break;
                }
                let msg = match line.strip_prefix("/game ") {
                    Some(text) => Msg::Game { text: text.into() },
                    None => Msg::Chat { text: line },
                };
                let data = encode(msg);
                for to in lobby.others() {
                    let _ = overlay.send(to, &data).await;
                }
            }
            ev = overlay.recv() => match ev {
                None => anyhow::bail!("the node stopped"),
                Some(ev) => on_event(&mut lobby, &overlay, &wanted, ev).await?,
            }
        }
    }
    for to in lobby.others() {
        let _ = overlay.send(to, &encode(Msg::Leave)).await;
    }
    overlay.leave().await;
    Ok(())
}

/// Each second: the host announces and drops silent players; a player says it is here (or
/// asks to join) and drops a silent host.
async fn heartbeat(lobby: &mut Lobby, overlay: &Overlay) -> anyhow::Result<()> {
    let now = Instant::now();
    if lobby.hosting {
        let silent: Vec<NodeId> = lobby
            .players
            .iter()
            .filter(|(_, (_, heard))| now - *heard > SILENT_AFTER)
            .map(|(n, _)| *n)
            .collect();
        for node in silent {
            lobby.drop_player(&node, overlay);
        }
        let announce = encode(Msg::Announce {
            game: lobby.game.clone().unwrap_or_default(),
            players: lobby.roster(overlay),
        });
        overlay.broadcast(&announce).await?;
        return Ok(());
    }
    let Some(host) = lobby.host else { return Ok(()) };
    if now - lobby.host_heard > SILENT_AFTER {
        lobby.close_game();
        return Ok(());
    }
    let msg = match (&lobby.game, lobby.joined) {
        (_, true) => Msg::Here,
        (Some(game), false) => Msg::Join { game: game.clone() },
        (None, false) => return Ok(()),
    };
    let _ = overlay.send(host, &encode(msg)).await;
    Ok(())
}

async fn on_event(
    lobby: &mut Lobby,
    overlay: &Overlay,
    wanted: &Option<String>,
    ev: Event,
) -> anyhow::Result<()> {
    match ev {
        Event::Joined(_) | Event::Undelivered { .. } => {}
        Event::Left(m) => {
            if lobby.host == Some(m.node) && !lobby.hosting {
                lobby.close_game();
            } else {
                lobby.drop_player(&m.node, overlay);
            }
        }
        Event::Message { from, data } => {
            // Datagrams of other applications on the same node are not ours.
            if let Some(msg) = decode(&data) {
                on_message(lobby, overlay, wanted, from, msg).await?;
            }
        }
    }
    Ok(())
}

async fn on_message(
    lobby: &mut Lobby,
    overlay: &Overlay,
    wanted: &Option<String>,
    from: Member,
    msg: Msg,
) -> anyhow::Result<()> {
    let now = Instant::now();
    match msg {
        Msg::Announce { game, players } if !lobby.hosting => {
            let wanted_this = wanted.as_ref().is_none_or(|w| *w == game);
            let ours = lobby.host == Some(from.node);
            if lobby.host.is_none() && wanted_this {
                common::show(format!("game \"{game}\" hosted by {}", from.account()));
                lobby.host = Some(from.node);
                lobby.game = Some(game);
                overlay
                    .send(
                        from.node,
                        &encode(Msg::Join {
                            game: lobby.game.clone().unwrap_or_default(),
                        }),
                    )
                    .await?;
            }
            if !ours && lobby.host != Some(from.node) {
                return Ok(());
            }
            lobby.host_heard = now;
            let me = lobby.me.to_string();
            let in_game = players.iter().any(|p| p.node == me);
            if in_game && !lobby.joined {
                common::show(format!(
                    "joined \"{}\"",
                    lobby.game.as_deref().unwrap_or_default()
                ));
            }
            lobby.joined = in_game;
            let known: BTreeMap<NodeId, (String, Instant)> = players
                .iter()
                .filter_map(|p| Some((p.node.parse().ok()?, (p.jid.clone(), now))))
                .filter(|(n, _)| *n != from.node)
                .collect();
            let changed = !known.keys().eq(lobby.players.keys());
            for (node, (jid, _)) in &lobby.players {
                if !known.contains_key(node) {
                    common::show(format!("left: {}", account(jid)));
                }
            }
            for (node, (jid, _)) in &known {
                if !lobby.players.contains_key(node) && *node != lobby.me {
                    common::show(format!("joined: {}", account(jid)));
                }
            }
            lobby.players = known;
            if changed {
                lobby.show_players(overlay);
            }
        }
        Msg::Join { game } if lobby.hosting && Some(&game) == lobby.game.as_ref() => {
            let fresh = !lobby.players.contains_key(&from.node);
            lobby.players.insert(from.node, (from.jid.clone(), now));
            if fresh {
                common::show(format!("joined: {}", from.account()));
                lobby.show_players(overlay);
            }
        }
        Msg::Here if lobby.hosting => {
            if let Some((_, heard)) = lobby.players.get_mut(&from.node) {
                *heard = now;
            }
        }
        Msg::Leave if lobby.hosting => lobby.drop_player(&from.node, overlay),
        Msg::Leave if lobby.host == Some(from.node) => lobby.close_game(),
        Msg::Chat { text } => common::show(format!("<{}> {text}", from.account())),
        Msg::Game { text } => common::show(format!("[game] <{}> {text}", from.account())),
        _ => {} // not for our role
    }
    Ok(())
}
