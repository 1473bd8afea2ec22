from gptcli.cli.app import process_main

process_main()
