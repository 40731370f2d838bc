//! error.rs — the error types shared by every layer of the crate.
//!
//! [`FieldError`]: one field of a payload is wrong (decode side).
//! [`EncodeError`]: a message cannot be put on the wire (encode side).
//! The frame layer's and message layer's own errors live in `frame.rs`
//! and `message.rs` and wrap these.

use core::fmt;

/// Why a payload was rejected while decoding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldError {
    /// The payload ended before the message did.
    Truncated,
    /// The message ended before the payload did.
    TrailingBytes,
    /// A field holds a value the ABI does not allow; the string names it.
    Invalid(&'static str),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldError::Truncated => f.write_str("payload truncated"),
            FieldError::TrailingBytes => f.write_str("trailing bytes after payload"),
            FieldError::Invalid(what) => write!(f, "invalid field: {what}"),
        }
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small for the frame.
    /// A buffer of [`crate::MAX_FRAME`] bytes always suffices.
    BufferTooSmall,
    /// A field holds a value the ABI does not allow (the peer would reject
    /// it); the string names it.
    Invalid(&'static str),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall => f.write_str("output buffer too small"),
            EncodeError::Invalid(what) => write!(f, "invalid field: {what}"),
        }
    }
}

impl From<FieldError> for EncodeError {
    fn from(e: FieldError) -> Self {
        match e {
            FieldError::Invalid(w) => EncodeError::Invalid(w),
            FieldError::Truncated | FieldError::TrailingBytes => EncodeError::Invalid("length"),
        }
    }
}
