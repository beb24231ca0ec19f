from tmrender.cli import main

main()
