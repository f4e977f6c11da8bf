fn main() {
    let p = std::env::args().nth(1).unwrap();
    match rigger::plan::load(std::path::Path::new(&p)) {
        Ok(plan) => println!("{} hosts", plan.hosts.len()),
        Err(e) => println!("{e}"),
    }
}
