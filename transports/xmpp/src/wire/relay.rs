//! Relayed datagram fragments:
//! `<d xmlns="urn:ringlet:relay:0" stream="<8 hex>" seq="<u64>" frag="<i>/<n>">base64</d>`.
//!
//! `stream` names one sender's sequence space towards one receiver (a new one after every
//! reset), `seq` numbers fragments within it, and `frag` (absent when `n` = 1) says this is
//! fragment `i` of `n` of one datagram whose fragments carry consecutive `seq` values, so the
//! datagram's first fragment has `seq - i`.

use base64::Engine;

use super::{ncname, required, WireError, NS_RELAY};
use crate::Element;

/// Most fragments one datagram may be split into.
pub const MAX_FRAGMENTS: u16 = 1024;

/// Position of a fragment within its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frag {
    pub index: u16,
    pub count: u16,
}

impl Frag {
    pub const WHOLE: Frag = Frag { index: 0, count: 1 };
}

/// One `<d/>` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayFrame {
    pub stream: u32,
    pub seq: u64,
    pub frag: Frag,
    pub data: Vec<u8>,
}

impl RelayFrame {
    /// Parses a fragment whose decoded payload must not exceed `max_payload` bytes.
    pub fn parse(elem: &Element, max_payload: usize) -> Result<Self, WireError> {
        if !elem.is("d", NS_RELAY) {
            return Err(WireError::WrongElement {
                name: "d",
                ns: NS_RELAY,
            });
        }
        let stream_hex = required(elem, "stream")?;
        if stream_hex.len() != 8 {
            return Err(WireError::BadAttr("stream"));
        }
        let stream = u32::from_str_radix(stream_hex, 16).map_err(|_| WireError::BadAttr("stream"))?;
        let seq_text = required(elem, "seq")?;
        if seq_text.is_empty() || !seq_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(WireError::BadAttr("seq"));
        }
        let seq: u64 = seq_text.parse().map_err(|_| WireError::BadAttr("seq"))?;
        let frag = match elem.attr("frag") {
            None => Frag::WHOLE,
            Some(text) => parse_frag(text).ok_or(WireError::BadAttr("frag"))?,
        };
        if u64::from(frag.index) > seq {
            return Err(WireError::BadAttr("frag"));
        }
        let text = elem.text();
        let encoded_limit = max_payload.div_ceil(3) * 4;
        if text.len() > encoded_limit {
            return Err(WireError::Oversized {
                len: text.len() / 4 * 3,
                limit: max_payload,
            });
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|_| WireError::BadBase64)?;
        if data.len() > max_payload {
            return Err(WireError::Oversized {
                len: data.len(),
                limit: max_payload,
            });
        }
        Ok(Self {
            stream,
            seq,
            frag,
            data,
        })
    }

    pub fn emit(&self) -> Element {
        let mut builder = Element::builder("d", NS_RELAY)
            .attr(ncname!("stream"), format!("{:08x}", self.stream))
            .attr(ncname!("seq"), self.seq.to_string());
        if self.frag != Frag::WHOLE {
            builder = builder.attr(
                ncname!("frag"),
                format!("{}/{}", self.frag.index, self.frag.count),
            );
        }
        builder
            .append(base64::engine::general_purpose::STANDARD.encode(&self.data))
            .build()
    }

    /// Bytes of `<d>` markup around the base64 text, plus the IQ envelope without JIDs; used to
    /// size fragments so that whole stanzas stay within a budget.
    pub const ENVELOPE_OVERHEAD: usize = 200;
}

fn parse_frag(text: &str) -> Option<Frag> {
    let (index, count) = text.split_once('/')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(count) {
        return None;
    }
    let index: u16 = index.parse().ok()?;
    let count: u16 = count.parse().ok()?;
    ((1..=MAX_FRAGMENTS).contains(&count) && index < count).then_some(Frag { index, count })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn elem(attrs: &str, text: &str) -> Element {
        format!("<d xmlns='{NS_RELAY}' {attrs}>{text}</d>")
            .parse()
            .unwrap()
    }

    #[test]
    fn round_trip_whole_and_fragment() {
        for frag in [Frag::WHOLE, Frag { index: 2, count: 5 }] {
            let f = RelayFrame {
                stream: 0xdeadbeef,
                seq: 17,
                frag,
                data: vec![1, 2, 3, 255],
            };
            assert_eq!(RelayFrame::parse(&f.emit(), 1024), Ok(f));
        }
    }

    #[test]
    fn rejects_malformed() {
        let ok = "stream='0000000a' seq='5'";
        assert_eq!(
            RelayFrame::parse(&elem(ok, "!!!"), 100),
            Err(WireError::BadBase64)
        );
        assert_eq!(
            RelayFrame::parse(&elem("stream='0000000a' seq='-1'", "AA=="), 100),
            Err(WireError::BadAttr("seq"))
        );
        assert_eq!(
            RelayFrame::parse(&elem("stream='0000000a' seq='99999999999999999999'", "AA=="), 100),
            Err(WireError::BadAttr("seq"))
        );
        assert_eq!(
            RelayFrame::parse(&elem("stream='zz' seq='1'", "AA=="), 100),
            Err(WireError::BadAttr("stream"))
        );
        assert_eq!(
            RelayFrame::parse(&elem("stream='0000000a' seq='1' frag='3/2'", "AA=="), 100),
            Err(WireError::BadAttr("frag"))
        );
        // index larger than seq: the datagram would start before seq 0
        assert_eq!(
            RelayFrame::parse(&elem("stream='0000000a' seq='1' frag='2/4'", "AA=="), 100),
            Err(WireError::BadAttr("frag"))
        );
        assert_eq!(
            RelayFrame::parse(&elem("seq='1'", "AA=="), 100),
            Err(WireError::MissingAttr("stream"))
        );
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 200]);
        assert!(matches!(
            RelayFrame::parse(&elem(ok, &big), 100),
            Err(WireError::Oversized { limit: 100, .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(stream in ".{0,12}", seq in ".{0,24}", frag in ".{0,12}", text in ".{0,64}") {
            let mut e = Element::builder("d", NS_RELAY)
                .attr(ncname!("stream"), stream)
                .attr(ncname!("seq"), seq)
                .attr(ncname!("frag"), frag)
                .build();
            e.append_text(text);
            let _ = RelayFrame::parse(&e, 64);
        }

        #[test]
        fn round_trip_any(stream: u32, seq in 1024u64.., index in 0u16..1024, extra in 0u16..10, data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let count = (index + 1 + extra).min(MAX_FRAGMENTS);
            let index = index.min(count - 1);
            let f = RelayFrame { stream, seq, frag: Frag { index, count }, data };
            prop_assert_eq!(RelayFrame::parse(&f.emit(), 300), Ok(f));
        }
    }
}
