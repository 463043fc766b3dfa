//! A small strict BER reader: low tag numbers, definite and indefinite
//! lengths, bounded depth. Enough for CMS; refuses what it does not know.
//!
//! Why not a crate: KMS's CiphertextForRecipient is BER with indefinite
//! lengths and constructed strings, which the `der`-based `cms` crate
//! refuses; `rasn` reads it but decodes far more than nekms accepts. This
//! reader takes exactly the shapes KMS sends, is fuzzed, and is checked
//! against OpenSSL's CMS and the real KMS vectors in testdata/.

/// A parsed BER element borrowing from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element<'a> {
    /// The identifier octet (class, constructed bit, tag number < 31).
    pub tag: u8,
    /// Encoded with an indefinite length (BER), as KMS does.
    pub indefinite: bool,
    pub body: Body<'a>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    Primitive(&'a [u8]),
    Constructed(Vec<Element<'a>>),
}

/// What is wrong with the BER.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BerError {
    #[error("input ends inside an element at offset {0}")]
    Truncated(usize),
    #[error("high tag numbers are not used in CMS (offset {0})")]
    HighTag(usize),
    #[error("length field of {0} bytes is not supported")]
    LongLength(usize),
    #[error("a primitive element cannot have an indefinite length (offset {0})")]
    IndefinitePrimitive(usize),
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("{0} bytes after the outermost element")]
    Trailing(usize),
    #[error("end-of-contents octets where an element was expected (offset {0})")]
    UnexpectedEoc(usize),
}

const MAX_DEPTH: usize = 24;
const CONSTRUCTED: u8 = 0x20;

/// Parse exactly one element spanning all of `input`.
pub fn parse(input: &[u8]) -> Result<Element<'_>, BerError> {
    let mut r = Reader { input, pos: 0 };
    let e = r.element(0)?;
    if r.pos != input.len() {
        return Err(BerError::Trailing(input.len() - r.pos));
    }
    Ok(e)
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

enum Length {
    Definite(usize),
    Indefinite,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, BerError> {
        let b = *self.input.get(self.pos).ok_or(BerError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn at_eoc(&self) -> bool {
        self.input.get(self.pos..self.pos + 2) == Some(&[0, 0])
    }

    fn header(&mut self) -> Result<(u8, Length), BerError> {
        let start = self.pos;
        let tag = self.byte()?;
        if tag & 0x1f == 0x1f {
            return Err(BerError::HighTag(start));
        }
        let first = self.byte()?;
        let len = match first {
            0x80 => Length::Indefinite,
            n if n < 0x80 => Length::Definite(n as usize),
            n => {
                let count = (n & 0x7f) as usize;
                if count > 4 {
                    return Err(BerError::LongLength(count));
                }
                let mut len = 0usize;
                for _ in 0..count {
                    len = (len << 8) | self.byte()? as usize;
                }
                Length::Definite(len)
            }
        };
        Ok((tag, len))
    }

    fn element(&mut self, depth: usize) -> Result<Element<'a>, BerError> {
        if depth > MAX_DEPTH {
            return Err(BerError::TooDeep(MAX_DEPTH));
        }
        let start = self.pos;
        if self.at_eoc() {
            return Err(BerError::UnexpectedEoc(start));
        }
        let (tag, len) = self.header()?;
        let constructed = tag & CONSTRUCTED != 0;
        match (len, constructed) {
            (Length::Indefinite, false) => Err(BerError::IndefinitePrimitive(start)),
            (Length::Definite(n), false) => {
                let end = self.pos.checked_add(n).filter(|e| *e <= self.input.len()).ok_or(BerError::Truncated(start))?;
                let body = &self.input[self.pos..end];
                self.pos = end;
                Ok(Element { tag, indefinite: false, body: Body::Primitive(body) })
            }
            (Length::Definite(n), true) => {
                let end = self.pos.checked_add(n).filter(|e| *e <= self.input.len()).ok_or(BerError::Truncated(start))?;
                let mut inner = Reader { input: &self.input[..end], pos: self.pos };
                let mut children = Vec::new();
                while inner.pos < end {
                    children.push(inner.element(depth + 1)?);
                }
                self.pos = end;
                Ok(Element { tag, indefinite: false, body: Body::Constructed(children) })
            }
            (Length::Indefinite, true) => {
                let mut children = Vec::new();
                loop {
                    if self.pos >= self.input.len() {
                        return Err(BerError::Truncated(start));
                    }
                    if self.at_eoc() {
                        self.pos += 2;
                        break;
                    }
                    children.push(self.element(depth + 1)?);
                }
                Ok(Element { tag, indefinite: true, body: Body::Constructed(children) })
            }
        }
    }
}

impl<'a> Element<'a> {
    pub fn children(&self) -> Option<&[Element<'a>]> {
        match &self.body {
            Body::Constructed(c) => Some(c),
            Body::Primitive(_) => None,
        }
    }

    pub fn primitive(&self) -> Option<&'a [u8]> {
        match self.body {
            Body::Primitive(b) => Some(b),
            Body::Constructed(_) => None,
        }
    }

    /// The bytes of an OCTET STRING-like element, primitive or constructed
    /// from primitive OCTET STRING chunks.
    pub fn octets(&self) -> Option<Vec<u8>> {
        match &self.body {
            Body::Primitive(b) => Some(b.to_vec()),
            Body::Constructed(chunks) => {
                let mut out = Vec::new();
                for c in chunks {
                    if c.tag != 0x04 {
                        return None;
                    }
                    out.extend_from_slice(c.primitive()?);
                }
                Some(out)
            }
        }
    }
}

// ---- writing (DER pieces and BER indefinite wrappers) ----

pub(crate) fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = (n as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(body);
    out
}

pub(crate) fn indefinite(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![tag, 0x80];
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&[0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_indefinite_lengths_parse() {
        let inner = der(0x04, b"abc");
        let bytes = indefinite(0x30, &[&indefinite(0xa0, &[&inner])]);
        let e = parse(&bytes).unwrap();
        assert_eq!(e.children().unwrap()[0].children().unwrap()[0].primitive(), Some(&b"abc"[..]));
    }

    #[test]
    fn malformed_input_is_refused_precisely() {
        assert_eq!(parse(&[]), Err(BerError::Truncated(0)));
        assert_eq!(parse(&[0x04, 0x05, 1]), Err(BerError::Truncated(0)));
        assert_eq!(parse(&[0x04, 0x80]), Err(BerError::IndefinitePrimitive(0)));
        assert_eq!(parse(&[0x30, 0x80, 0x04, 0x00]), Err(BerError::Truncated(0)));
        assert_eq!(parse(&[0x1f, 0x01, 0x00]), Err(BerError::HighTag(0)));
        assert_eq!(parse(&[0x04, 0x85, 1, 0, 0, 0, 0]), Err(BerError::LongLength(5)));
        assert_eq!(parse(&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff]), Err(BerError::Truncated(0)));
        assert_eq!(parse(&[0x04, 0x00, 0x00]), Err(BerError::Trailing(1)));
        let deep = [0x30u8, 0x80].repeat(100);
        assert_eq!(parse(&deep), Err(BerError::TooDeep(24)));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data: Vec<u8>) {
            let _ = parse(&data);
        }
    }
}
