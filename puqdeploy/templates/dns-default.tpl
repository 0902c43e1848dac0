# puqdeploy default DNS zone template.
# One record per line: NAME TYPE [PRIORITY] VALUE   (PRIORITY only for MX and SRV)
# Placeholders: {domain} {server_ip} {mail_server_ip} {mail_server_hostname} {ns1}..{ns8}
# {domainkey} {service_id} {client_id} {year} {unixtime}. A record whose placeholder is empty
# is skipped (e.g. {ns3} when the group has two nameservers, {domainkey} before DKIM exists).
@                NS     {ns1}.
@                NS     {ns2}.
@                NS     {ns3}.
@                NS     {ns4}.
@                NS     {ns5}.
@                NS     {ns6}.
@                NS     {ns7}.
@                NS     {ns8}.
@                A      {server_ip}
www              CNAME  {domain}.
ftp              CNAME  {domain}.
mail             A      {mail_server_ip}
webmail          CNAME  mail.{domain}.
@                MX     10 mail.{domain}.
@                TXT    v=spf1 a mx ip4:{mail_server_ip} -all
_dmarc           TXT    v=DMARC1; p=quarantine; pct=100
mail._domainkey  TXT    {domainkey}
@                CAA    0 issue "letsencrypt.org"
