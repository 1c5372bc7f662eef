from xcam.cli import main

main()
