// Credential-issuing core; the runtime wires these in later.
#[allow(dead_code)]
mod atomic_file;
#[allow(dead_code)]
mod identity_files;
#[allow(dead_code)]
mod issuer;
#[cfg(test)]
mod testutil;
// The integration-test sshd harness, reused so unit tests can prove that the
// certificates the issuer writes get a real login.
#[cfg(test)]
#[path = "../tests/support/sshd.rs"]
#[allow(dead_code)]
mod sshd_harness;

fn main() {
    println!("Hello, world!");
}
