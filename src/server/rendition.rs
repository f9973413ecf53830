//! Renditions: a player without multitrack support plays one video track
//! of an Enhanced RTMP multitrack stream by name (docs/codecs.md,
//! "Renditions").
//!
//! `APP/NAME~N` is video track N of `APP/NAME`, re-wrapped as single-track
//! messages ([`crate::rendition`]) with the matching audio. It is an
//! ordinary stream of the registry (its own GOP cache and header store
//! under the same bounds, HLS, relays, `/api/streams`), published by the
//! parent's publisher from the publisher's worker, and started only when a
//! player asks for it. It starts with the parent's latest headers and
//! cached GOP (an instant start), re-wrapped by the publisher's worker
//! before the next frame; from then on every frame the parent publishes is
//! re-wrapped once, whoever plays it.
//! A player that asks before the track exists waits, and the rendition
//! starts with the track's sequence header. It ends with the parent's
//! publisher.

use super::base::ConnId;
use super::ctx::WorkerCtx;
use super::shared::{Command, Message, RelayCommand};
use super::stream::{Frame, HeaderSlot, RenditionLink, Stream};
use crate::media;
use crate::protocol::session::MediaKind;
use crate::rendition::{self, Rewrap};
use bytes::{BufMut, BytesMut};
use std::sync::Arc;
use std::time::Instant;

impl WorkerCtx {
    /// A player asked for `key`: when it names a rendition (`APP/NAME~N`)
    /// of a live stream with video track N, make sure it is published.
    /// Cheap when it is already (one registry lookup).
    pub(super) fn ensure_rendition(&mut self, key: &str) {
        let Some((parent_key, track)) = rendition::parse_name(key) else {
            return;
        };
        if rendition::parse_name(parent_key).is_some() {
            // No rendition of a rendition: `NAME~0~0~0...` would otherwise
            // re-wrap every frame once per level, at a player's request.
            return;
        }
        let shared = self.shared.clone();
        let registry = &shared.registry;
        if registry
            .get(key)
            .is_some_and(|s| s.with_state(|st| st.publisher().is_some()))
        {
            return;
        }
        let Some(parent) = registry.get(parent_key) else {
            return;
        };
        let Some(publisher) = parent.with_state(|st| st.publisher().cloned()) else {
            return;
        };
        if !parent.has_video_track(track) {
            // The rendition starts with the track's sequence header.
            return;
        }
        let conn = publisher.conn_id;
        // The name is claimed first (the registry's lock comes before any
        // stream's): a publisher of that very name, or another worker
        // starting the rendition meanwhile, keeps it.
        let Ok((derived, notice)) = registry.publish(key, publisher) else {
            return;
        };
        self.publication_started(Instant::now(), &derived, notice, conn);
        if parent.attach_rendition(track, derived.clone(), conn) {
            log::info!(
                "rendition start stream={key} parent={parent_key} track={track} worker={}",
                self.index
            );
        } else {
            // The parent's publisher left meanwhile.
            self.end_derived(&derived, conn);
        }
    }

    /// Whether `stream`, published by connection `publisher`, is a
    /// rendition: its name is `PARENT~N` and `publisher` publishes
    /// `PARENT` (a publisher's own stream called `cam~1` is not one).
    pub(super) fn is_rendition(&self, stream: &Stream, publisher: ConnId) -> bool {
        rendition::parse_name(&stream.key).is_some_and(|(parent, _)| {
            self.shared.registry.get(parent).is_some_and(|p| {
                p.with_state(|st| st.publisher().is_some_and(|b| b.conn_id == publisher))
            })
        })
    }

    /// Re-wraps frame `f` of the parent into the rendition `link` (when
    /// some of it belongs there).
    fn publish_rewrapped(&mut self, link: &RenditionLink, f: &Frame) {
        let payload = match f.kind {
            MediaKind::Video => rendition::video(&f.payload, link.track),
            MediaKind::Audio => rendition::audio(&f.payload, link.audio_track),
            MediaKind::Data => Rewrap::Same,
        };
        let payload = match payload {
            Rewrap::Same => f.payload.clone(),
            Rewrap::Drop => return,
            // One copy of the track's bytes per frame and rendition (not per
            // player): a frame's payload is one buffer every wire form
            // slices.
            Rewrap::New { head, body } => {
                let mut b = BytesMut::with_capacity(head.as_slice().len() + body.len());
                b.put_slice(head.as_slice());
                b.put_slice(body);
                b.freeze()
            }
        };
        self.publish_frame(&link.stream, link.publisher, f.kind, f.timestamp, payload);
    }

    /// After `frame` of `parent` was published by `publisher`: re-wraps it
    /// into the parent's renditions, and starts those that players wait
    /// for when it is a video sequence header.
    pub(super) fn publish_renditions(
        &mut self,
        parent: &Arc<Stream>,
        publisher: ConnId,
        frame: &Frame,
    ) {
        if let Some(links) = parent.renditions() {
            for link in links
                .iter()
                .filter(|l| l.publisher == publisher && frame.seq >= l.from_seq)
            {
                let seed =
                    std::mem::take(&mut *link.seed.lock().unwrap_or_else(|p| p.into_inner()));
                for f in &seed {
                    self.publish_rewrapped(link, f);
                }
                self.publish_rewrapped(link, frame);
            }
        }
        if matches!(
            frame.header,
            Some(HeaderSlot::Config {
                kind: MediaKind::Video,
                ..
            })
        ) {
            for t in media::video_tracks(&frame.payload) {
                let key = format!("{}~{}", parent.key, t.info.track);
                let waiting = self.shared.registry.get(&key).is_some_and(|s| {
                    s.with_state(|st| st.publisher().is_none() && st.interest() != 0)
                });
                if waiting {
                    self.ensure_rendition(&key);
                }
            }
        }
    }

    /// The parent's publisher `publisher` left: its renditions end too.
    /// When the parent has a new publisher already (a replacement), the
    /// renditions players still watch start again from it.
    pub(super) fn end_renditions(&mut self, parent: &Arc<Stream>, publisher: ConnId) {
        for link in parent.take_renditions(publisher) {
            self.end_derived(&link.stream, publisher);
            log::info!(
                "rendition stop stream={} parent={} track={}",
                link.stream.key,
                parent.key,
                link.track
            );
            if link.stream.with_state(|st| st.interest() != 0) {
                self.ensure_rendition(&link.stream.key);
            }
        }
    }

    /// Ends the publication of rendition `stream` by `publisher`: players
    /// are told, HLS (and a recording started through the API) finishes,
    /// pushes stop.
    fn end_derived(&mut self, stream: &Arc<Stream>, publisher: ConnId) {
        if let Some(notice) = self.shared.registry.unpublish(stream, publisher) {
            self.notify(stream, notice, false);
            let wake = super::record::unpublish(stream);
            self.wake_hls(stream.id, wake);
        }
        let shared = self.shared.clone();
        for conn in self.relays.stop_pushes(&shared, stream, publisher) {
            let why = "the stream ended".to_owned();
            let cmd = RelayCommand::Goodbye { conn, why };
            self.post(self.index, Message::Command(Command::Relay(cmd)));
        }
    }
}
