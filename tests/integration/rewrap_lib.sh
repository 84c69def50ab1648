# Shared by rewrap_kra.sh and rewrap_kra_server.sh (sourced after lib.sh, not a test): the world both
# re-wrap tests start from.
#
# rewrap_world CA_SUBJECT: SoftHSM2 tokens CA and KRA1-4, PostgreSQL, setup; admin, cm1, audrey; KRAs
# kra1 (RSA) and kra2, kra3 (EC P-256) with accounts k1-k3 (k4's password made for later); foreign
# issuers allowed, sets of two.
rewrap_world() {
    local k
    provision_tokens "$T/hsm" CA KRA1 KRA2 KRA3 KRA4
    export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
    start_pg "$T/pg"
    export P11ESCROW_DATABASE=$DB
    run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject "$1"

    pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw audrey 'audrey-password-05'
    P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
    as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --name kra1
    for k in 2 3; do
        as admin 0 kra enroll --pin-file "$PIN_FILE" --token "pkcs11:token=KRA$k" --kra-pin-file "$PIN_FILE" \
            --name "kra$k" --key-type ec-p256
    done
    P11ESCROW_NEW_PASSWORD=$(cat "$T/cm1.pw") as admin 0 account add cm1 --role cert-manager
    P11ESCROW_NEW_PASSWORD=$(cat "$T/audrey.pw") as admin 0 account add audrey --role auditor
    for k in 1 2 3 4; do pw "k$k" "k$k-password-000001"; done
    for k in 1 2 3; do P11ESCROW_NEW_PASSWORD=$(cat "$T/k$k.pw") as admin 0 account add "k$k" --role kra --kra "kra$k"; done
    as admin 0 policy set allow_foreign_issuers true
    as admin 0 policy set kra_set_size 2
}

# card N: the --card options of KRA N's card and account
card() { echo --card "pkcs11:token=KRA$1" --card-user "k$1" --card-pin-file "$PIN_FILE" --card-password-file "$T/k$1.pw"; }
