//! The credentials tbot makes: the embedded SSH CA (`issuer`) and its key
//! file (`ca_key_file`), and the identity files it writes, one generation
//! at a time (`identity_files`).

pub mod ca_key_file;
pub mod identity_files;
pub mod issuer;
