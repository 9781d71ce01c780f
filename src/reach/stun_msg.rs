//! STUN messages as ringlet uses them (on `stun_codec`): plain binding requests to servers,
//! RFC 5780 change requests for filtering tests, and ICE-style connectivity checks between
//! peers, authenticated with short-term credentials (USERNAME `to_ufrag:from_ufrag`,
//! MESSAGE-INTEGRITY keyed with the receiver's password for requests, the responder's own for
//! responses), so a stray or spoofed packet cannot pass for a peer.

use std::net::SocketAddr;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5245::attributes::UseCandidate;
use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MappedAddress, MessageIntegrity, Software, Username, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5780::attributes::{ChangeRequest, OtherAddress, ResponseOrigin};
use stun_codec::{
    define_attribute_enums, Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId,
};

define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        MappedAddress,
        XorMappedAddress,
        Username,
        MessageIntegrity,
        ErrorCode,
        Software,
        Fingerprint,
        ChangeRequest,
        OtherAddress,
        ResponseOrigin,
        UseCandidate
    ]
);

pub type StunMessage = Message<Attribute>;

/// Why a STUN packet was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("malformed STUN message")]
    Malformed,
    #[error("not a binding message")]
    NotBinding,
}

pub fn decode(bytes: &[u8]) -> Result<StunMessage, StunError> {
    let msg = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(bytes)
        .map_err(|_| StunError::Malformed)?
        .map_err(|_| StunError::Malformed)?;
    if msg.method() != BINDING {
        return Err(StunError::NotBinding);
    }
    Ok(msg)
}

pub fn encode(msg: StunMessage) -> Vec<u8> {
    // Encoding a message built from valid attributes cannot fail.
    MessageEncoder::new().encode_into_bytes(msg).unwrap_or_default()
}

/// A plain binding request, optionally asking the server to answer from its other IP/port.
pub fn binding_request(tid: [u8; 12], change: Option<(bool, bool)>) -> Vec<u8> {
    let mut msg = StunMessage::new(MessageClass::Request, BINDING, TransactionId::new(tid));
    if let Some((ip, port)) = change {
        msg.add_attribute(ChangeRequest::new(ip, port));
    }
    encode(msg)
}

/// The reflexive address a response carries (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
pub fn mapped_address(msg: &StunMessage) -> Option<SocketAddr> {
    msg.get_attribute::<XorMappedAddress>()
        .map(|a| a.address())
        .or_else(|| msg.get_attribute::<MappedAddress>().map(|a| a.address()))
}

pub fn other_address(msg: &StunMessage) -> Option<SocketAddr> {
    msg.get_attribute::<OtherAddress>().map(|a| a.address())
}

/// A connectivity check from `from_ufrag` to the peer `to_ufrag`, keyed with `to_pwd`.
pub fn check_request(tid: [u8; 12], to_ufrag: &str, from_ufrag: &str, to_pwd: &str) -> Vec<u8> {
    sign(check(tid, to_ufrag, from_ufrag), to_pwd)
}

/// A check that also says "this is the pair I keep" (ICE's USE-CANDIDATE).
pub fn nomination_request(tid: [u8; 12], to_ufrag: &str, from_ufrag: &str, to_pwd: &str) -> Vec<u8> {
    let mut msg = check(tid, to_ufrag, from_ufrag);
    msg.add_attribute(UseCandidate::new());
    sign(msg, to_pwd)
}

fn check(tid: [u8; 12], to_ufrag: &str, from_ufrag: &str) -> StunMessage {
    let mut msg = StunMessage::new(MessageClass::Request, BINDING, TransactionId::new(tid));
    if let Ok(user) = Username::new(format!("{to_ufrag}:{from_ufrag}")) {
        msg.add_attribute(user);
    }
    msg
}

/// True if a check nominates its pair (carries USE-CANDIDATE).
pub fn nominates(msg: &StunMessage) -> bool {
    msg.get_attribute::<UseCandidate>().is_some()
}

/// The answer to a check: the address the request came from, keyed with our own password.
pub fn check_response(tid: TransactionId, seen_from: SocketAddr, own_pwd: &str) -> Vec<u8> {
    let mut msg = StunMessage::new(MessageClass::SuccessResponse, BINDING, tid);
    msg.add_attribute(XorMappedAddress::new(seen_from));
    sign(msg, own_pwd)
}

fn sign(mut msg: StunMessage, pwd: &str) -> Vec<u8> {
    if let Ok(integrity) = MessageIntegrity::new_short_term_credential(&msg, pwd) {
        msg.add_attribute(integrity);
    }
    encode(msg)
}

/// True if `msg` carries a MESSAGE-INTEGRITY valid for `pwd`.
pub fn verify(msg: &StunMessage, pwd: &str) -> bool {
    msg.get_attribute::<MessageIntegrity>()
        .is_some_and(|mi| mi.check_short_term_credential(pwd).is_ok())
}

/// The USERNAME of a check, split into (receiver ufrag, sender ufrag).
pub fn check_username(msg: &StunMessage) -> Option<(&str, &str)> {
    msg.get_attribute::<Username>()
        .and_then(|u| u.name().split_once(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nomination_is_a_check_that_says_so() {
        let nomination = decode(&nomination_request([3; 12], "bob", "alice", "bobpw")).unwrap();
        assert!(nominates(&nomination) && verify(&nomination, "bobpw"));
        assert_eq!(check_username(&nomination), Some(("bob", "alice")));
        let plain = decode(&check_request([3; 12], "bob", "alice", "bobpw")).unwrap();
        assert!(!nominates(&plain));
    }

    #[test]
    fn checks_verify_only_with_the_right_password() {
        let req = decode(&check_request([1; 12], "bob", "alice", "bobpw")).unwrap();
        assert_eq!(req.class(), MessageClass::Request);
        assert_eq!(check_username(&req), Some(("bob", "alice")));
        assert!(verify(&req, "bobpw"));
        assert!(!verify(&req, "alicepw"));
        let addr: SocketAddr = "203.0.113.5:4000".parse().unwrap();
        let resp = decode(&check_response(req.transaction_id(), addr, "bobpw")).unwrap();
        assert_eq!(resp.class(), MessageClass::SuccessResponse);
        assert_eq!(mapped_address(&resp), Some(addr));
        assert!(verify(&resp, "bobpw"));
    }

    /// RFC 5780 §7.2: change-IP is 0x04, change-port 0x02 (stun_codec's decoder gets this wrong,
    /// its encoder right; only the encoder is used here).
    #[test]
    fn change_request_is_encoded_per_rfc5780() {
        let bytes = binding_request([4; 12], Some((true, true)));
        assert_eq!(&bytes[20..28], &[0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x06]);
        let port_only = binding_request([4; 12], Some((false, true)));
        assert_eq!(port_only[27], 0x02);
    }

    #[test]
    fn tampered_or_garbage_packets_are_rejected() {
        let mut bytes = check_request([2; 12], "bob", "alice", "pw");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let msg = decode(&bytes).unwrap();
        assert!(!verify(&msg, "pw"));
        assert!(matches!(decode(&[0u8; 3]), Err(StunError::Malformed)));
        let mut truncated = binding_request([3; 12], None);
        truncated[3] = 40; // claims more attribute bytes than present
        assert!(decode(&truncated).is_err());
    }
}
