fn main() {
    println!("self-redteam: engine not built yet");
}
