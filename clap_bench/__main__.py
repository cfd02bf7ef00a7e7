from clap_bench.cli import main

main()
