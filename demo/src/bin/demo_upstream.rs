//! `demo-upstream --listen 127.0.0.1:0 --name course_service`: see the library docs.

fn main() {
    edge_guard_demo::run();
}
