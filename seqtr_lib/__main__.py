from seqtr_lib.cli import main

main()
