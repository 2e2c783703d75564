// Credential-issuing core; the runtime wires these in later.
#[allow(dead_code)]
mod atomic_file;
#[allow(dead_code)]
mod identity_files;
#[allow(dead_code)]
mod issuer;
#[cfg(test)]
mod testutil;

fn main() {
    println!("Hello, world!");
}
