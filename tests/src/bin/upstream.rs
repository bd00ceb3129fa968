//! The demo upstream, built inside this package so the harness can find it next
//! to the test executables (`target/<profile>/upstream`).

fn main() {
    edge_guard_demo::run();
}
