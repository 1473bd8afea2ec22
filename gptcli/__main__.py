from gptcli.cli import process_main

process_main()
