//! What the ABI layer hands to the safe code and what it takes back: the
//! caller's pointers read once into plain values, and the answers written
//! back by the ABI layer alone.
//!
//! A pointer that cannot be read becomes an `Err(CK_RV)` here, not an early
//! return in the ABI layer: the safe code reports it at the point PKCS#11
//! (and every earlier version of this module) reports it, after the
//! session and operation checks, and ends the operation where it must.

use cryptoki_sys::{CK_ATTRIBUTE_TYPE, CK_RV};

/// One entry of a template the module reads (C_FindObjectsInit,
/// C_GenerateKeyPair): the type, and the value's bytes or why they could
/// not be read (a NULL `pValue` with a length).
pub struct Attribute<'a> {
    pub kind: CK_ATTRIBUTE_TYPE,
    pub value: Result<&'a [u8], CK_RV>,
}

/// Where the caller wants a variable-length output: a `(pOut, pulOutLen)`
/// pair read per PKCS#11 2.40, section 5.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutSpace {
    /// `pulOutLen` is NULL.
    Missing,
    /// `pOut` is NULL: the caller asks for the length.
    Query,
    /// A buffer of this many bytes.
    Room(usize),
}

/// What goes back into a `(pOut, pulOutLen)` pair.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<T> {
    /// The length the output needs, for a caller who asked for it.
    Length(usize),
    /// The buffer is too short: the length it needs, with
    /// CKR_BUFFER_TOO_SMALL.
    TooSmall(usize),
    /// The output, copied into the caller's buffer.
    Bytes(T),
}

impl OutSpace {
    /// For an output of `need` bytes: the reply when the caller only asked
    /// for the length or gave too little room; `None` when the buffer takes
    /// it. `Missing` is the caller's to handle first (it returns `None`).
    pub fn lacks<T>(self, need: usize) -> Option<Reply<T>> {
        match self {
            OutSpace::Query => Some(Reply::Length(need)),
            OutSpace::Room(room) if room < need => Some(Reply::TooSmall(need)),
            OutSpace::Room(_) | OutSpace::Missing => None,
        }
    }
}

/// One entry of a C_GetAttributeValue template: the type asked for and
/// the room given for its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttributeRequest {
    pub kind: CK_ATTRIBUTE_TYPE,
    /// `None`: `pValue` is NULL (the caller asks for the length);
    /// `Some(n)`: a buffer of `n` bytes.
    pub room: Option<usize>,
}

/// What goes back into one entry of a C_GetAttributeValue template.
#[derive(Debug, PartialEq, Eq)]
pub enum AttributeAnswer {
    /// `ulValueLen` only.
    Length(usize),
    /// The value, copied into `pValue`, and its length.
    Bytes(Vec<u8>),
    /// `ulValueLen` set to CK_UNAVAILABLE_INFORMATION.
    Unavailable,
}

/// C_GetAttributeValue's answer: one entry per attribute asked, in order,
/// and the return value once all are written.
pub struct TemplateAnswer {
    pub entries: Vec<AttributeAnswer>,
    pub rv: CK_RV,
}
