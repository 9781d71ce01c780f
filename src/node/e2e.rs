//! End-to-end sessions in the daemon: application datagrams that ride the ring (through a
//! tunnel's relaying neighbour, or any forwarding peer) are sealed for their destination in a
//! session of `secure::e2e`, so forwarders see only ring headers. Ring deliveries are opened
//! there; what does not open (another source, a forgery, no session) is dropped and counted.

use std::time::Instant;

use ringlet_xmpp::NodeIdBytes;

use super::runtime::Runtime;
use crate::identity::NodeId;
use crate::overlay::RingAddr;

impl Runtime {
    /// Seals `data` for `to` and routes what the session has to send (the datagram, or the
    /// handshake it waits for).
    pub(super) fn e2e_send(&mut self, now: Instant, to: NodeIdBytes, data: &[u8]) {
        self.e2e.send(now, to, data);
        self.drain_e2e(now);
    }

    /// A ring delivery: an end-to-end packet from `src`.
    pub(super) fn e2e_deliver(&mut self, now: Instant, src: RingAddr, payload: &[u8]) {
        let crl = self.reach.links.crl();
        self.e2e.handle(now, src.to_bytes(), payload, crl);
        self.drain_e2e(now);
    }

    pub(super) fn drain_e2e(&mut self, now: Instant) {
        while let Some((to, packet)) = self.e2e.poll_transmit() {
            if self.ring.send(now, RingAddr::from(NodeId(to)), packet).is_err() {
                self.ring_no_path += 1;
            }
        }
        while let Some((from, data)) = self.e2e.poll_delivered() {
            self.app_datagram(now, from, data);
        }
    }
}
