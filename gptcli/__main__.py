from gptcli.cli import main

main()
