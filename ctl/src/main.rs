fn main() {
    eprintln!(
        "{}: not yet implemented (see the README's status section)",
        env!("CARGO_PKG_NAME")
    );
    std::process::exit(2);
}
