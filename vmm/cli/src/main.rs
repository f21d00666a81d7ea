fn main() { println!("netmem-lab"); }
