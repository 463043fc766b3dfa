//! Key policies (in progress).
