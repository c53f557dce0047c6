# shellcheck shell=sh
# Login shells reset PATH in /etc/profile; put /opt/python back in front.
case ":${PATH}:" in
    *:/opt/python/bin:*) ;;
    *) PATH="/opt/python/bin:${PATH}"; export PATH ;;
esac
