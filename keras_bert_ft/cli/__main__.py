from keras_bert_ft.cli.app import console

console()
