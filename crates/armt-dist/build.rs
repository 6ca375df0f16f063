include!("../../build-support/libtorch_link.rs");

fn main() {
    link_libtorch();
}
