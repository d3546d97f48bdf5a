from flow8_streams.cli.main import main

main()
